package pool

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

const (
	// MaxNameLength bounds volume names (CSI names from Kubernetes are short;
	// anything longer is hostile or a mistake).
	MaxNameLength = 128
	// MaxIDLength bounds volume IDs: the CSI spec's limit for IDs a CO
	// stores. flashpv's own are at most 65 bytes.
	MaxIDLength = 128
	hashHexLen  = 32
)

var (
	poolNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)
	keyRE      = regexp.MustCompile(`^[0-9a-f]{32}$`)
)

// ValidPoolName reports whether s can name a pool. Pool names become part of
// volume IDs, so they are short DNS-label-like strings.
func ValidPoolName(s string) bool { return poolNameRE.MatchString(s) }

// VolumeID is the CSI volume ID: "<pool>.<key>", where key is derived from the
// volume name. Deriving it from the name makes CreateVolume idempotent across
// crashes without any index: a retry computes the same ID and finds the same
// files. IDs contain only [a-z0-9.-], so they are safe as path elements.
type VolumeID struct {
	Pool string
	Key  string
}

func (id VolumeID) String() string { return id.Pool + "." + id.Key }

// KeyForName returns the file key of a volume name.
func KeyForName(name string) string {
	sum := sha256.Sum256([]byte(name))
	return hex.EncodeToString(sum[:])[:hashHexLen]
}

// IDFor returns the ID a volume named name gets in pool.
func IDFor(pool, name string) VolumeID {
	return VolumeID{Pool: pool, Key: KeyForName(name)}
}

// ParseVolumeID validates s strictly and splits it. A string no CO could
// hold as an ID (empty, too long, not UTF-8, with a NUL byte or a path
// element) is ErrInvalid. A well-formed string that is not of flashpv's form
// names no volume here, so it is ErrNotFound, as for any unknown ID: other
// drivers' IDs and csi-sanity's made-up ones get the answer the spec asks for.
func ParseVolumeID(s string) (VolumeID, error) {
	if err := validIDString(s); err != nil {
		return VolumeID{}, err
	}
	poolName, key, ok := strings.Cut(s, ".")
	if !ok || !ValidPoolName(poolName) || !keyRE.MatchString(key) {
		return VolumeID{}, fmt.Errorf("%w: %q is not a flashpv volume ID", ErrNotFound, truncate(s))
	}
	return VolumeID{Pool: poolName, Key: key}, nil
}

// validIDString refuses what cannot be an ID of any driver.
func validIDString(s string) error {
	why := ""
	switch {
	case s == "":
		why = "is empty"
	case len(s) > MaxIDLength:
		why = fmt.Sprintf("is longer than %d bytes", MaxIDLength)
	case !utf8.ValidString(s):
		why = "is not UTF-8"
	case strings.ContainsRune(s, 0):
		why = "contains a NUL byte"
	case strings.ContainsRune(s, '/') || s == "." || s == "..":
		why = "is a path"
	default:
		return nil
	}
	return fmt.Errorf("%w: malformed volume ID %q: %s", ErrInvalid, truncate(s), why)
}

// ValidateName checks a CSI volume name before it is hashed or stored.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: volume name is empty", ErrInvalid)
	case len(name) > MaxNameLength:
		return fmt.Errorf("%w: volume name longer than %d bytes", ErrInvalid, MaxNameLength)
	case strings.ContainsRune(name, 0):
		return fmt.Errorf("%w: volume name contains a NUL byte", ErrInvalid)
	}
	return nil
}

// truncate keeps hostile input from flooding error messages and logs.
func truncate(s string) string {
	const max = 80
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
