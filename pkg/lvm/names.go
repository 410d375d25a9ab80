package lvm

import (
	"fmt"
	"strings"
)

// ValidTag tells whether LVM accepts s as a tag: 1 to 1024 characters of
// [A-Za-z0-9_+.-/=!:&#], not starting with a hyphen (lvm(8), and
// validate_tag in lib/misc/lvm-string.c, which checks only the characters).
func ValidTag(s string) bool {
	if len(s) == 0 || len(s) > 1024 || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isNameChar(s[i]) && !strings.ContainsRune("/=!:&#", rune(s[i])) {
			return false
		}
	}
	return true
}

// ValidName tells whether LVM accepts s as the name of a new LV; every such
// name is also a valid VG name. Rules of lvm(8) and lib/misc/lvm-string.c:
// up to 127 characters of [A-Za-z0-9+_.-], not starting with a hyphen, not
// "." or "..", not starting "snapshot" or "pvmove", and none of the suffixes
// LVM gives its internal LVs anywhere in it.
func ValidName(s string) bool {
	if !plainName(s) || s == "." || s == ".." || len(s) > 127 {
		return false
	}
	for _, p := range []string{"snapshot", "pvmove"} {
		if strings.HasPrefix(s, p) {
			return false
		}
	}
	for _, r := range []string{
		"_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_wcorig", "_mimage", "_mlog",
		"_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_imeta", "_iorig", "_pmspare", "_vorigin",
	} {
		if strings.Contains(s, r) {
			return false
		}
	}
	return true
}

// plainName is what an argument naming a VG or LV must be to reach lvm:
// nothing it could read as an option, a path or a tag.
func plainName(s string) bool {
	if s == "" || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isNameChar(s[i]) {
			return false
		}
	}
	return true
}

func isNameChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("+_.-", c) >= 0
}

func checkNames(names ...string) error {
	for _, n := range names {
		if !plainName(n) {
			return fmt.Errorf("%w: name %q", ErrInvalid, n)
		}
	}
	return nil
}

func checkTags(tags []string) error {
	for _, t := range tags {
		if !ValidTag(t) {
			return fmt.Errorf("%w: tag %q", ErrInvalid, t)
		}
	}
	return nil
}
