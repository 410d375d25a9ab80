package pool

import (
	"errors"
	"strings"
	"testing"
)

func TestParseVolumeIDClasses(t *testing.T) {
	key := KeyForName("pvc-1")
	for _, tc := range []struct {
		name string
		id   string
		want error // nil: parses
	}{
		{"ours", "fast." + key, nil},
		{"longest pool name", strings.Repeat("a", 32) + "." + key, nil},

		// Strings no driver could use as an ID: InvalidArgument.
		{"empty", "", ErrInvalid},
		{"too long", strings.Repeat("x", MaxIDLength+1), ErrInvalid},
		{"NUL byte", "fast." + key[:31] + "\x00", ErrInvalid},
		{"not UTF-8", "fast.\xff", ErrInvalid},
		{"slash", "fast/" + key, ErrInvalid},
		{"escaping path", "../" + key, ErrInvalid},
		{"absolute path", "/etc/passwd", ErrInvalid},
		{"dot", ".", ErrInvalid},
		{"dot dot", "..", ErrInvalid},

		// Valid strings that are not of flashpv's form: no such volume.
		{"csi-sanity's fake ID", "fake-vol-id-0123456789", ErrNotFound},
		{"no key", "fast", ErrNotFound},
		{"empty key", "fast.", ErrNotFound},
		{"empty pool", ".abc", ErrNotFound},
		{"key not hex", "fast." + strings.Repeat("g", 32), ErrNotFound},
		{"upper-case pool", "Fast." + key, ErrNotFound},
		{"key too long", "fast." + key + "0", ErrNotFound},
		{"key upper-case", "fast." + strings.ToUpper(key), ErrNotFound},
		{"pool starts with a dash", "-fast." + key, ErrNotFound},
		{"pool name too long", strings.Repeat("a", 33) + "." + key, ErrNotFound},
		{"two dots", "fast.." + key, ErrNotFound},
		{"at the length limit", strings.Repeat("x", MaxIDLength), ErrNotFound},
		{"backslash", `fast\` + key, ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseVolumeID(tc.id)
			if tc.want == nil {
				if err != nil || got.String() != tc.id {
					t.Fatalf("ParseVolumeID(%q) = %v, %v; want it back", tc.id, got, err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("ParseVolumeID(%q) = %v, want %v", tc.id, err, tc.want)
			}
			// One class only, so the gRPC code is never ambiguous.
			other := ErrNotFound
			if tc.want == ErrNotFound {
				other = ErrInvalid
			}
			if errors.Is(err, other) {
				t.Fatalf("ParseVolumeID(%q) = %v, is also %v", tc.id, err, other)
			}
		})
	}
}
