package diskformat

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		found int
		want  int
		newer bool
		fail  bool
	}{
		{found: 0, want: 1},
		{found: 1, want: 1},
		{found: Current, want: Current},
		{found: Current + 1, newer: true, fail: true},
		{found: 99, newer: true, fail: true},
		{found: -1, fail: true},
	} {
		got, err := Check("volume metadata x.json", tc.found)
		if (err != nil) != tc.fail || errors.Is(err, ErrNewer) != tc.newer {
			t.Errorf("Check(%d) = %d, %v", tc.found, got, err)
			continue
		}
		if err == nil && got != tc.want {
			t.Errorf("Check(%d) = %d, want %d", tc.found, got, tc.want)
		}
		if tc.newer {
			// The message names the record, the version found and the newest known.
			msg := err.Error()
			for _, part := range []string{"x.json", "version " + strconv.Itoa(tc.found), "up to " + strconv.Itoa(Current)} {
				if !strings.Contains(msg, part) {
					t.Errorf("Check(%d): %q does not name %q", tc.found, msg, part)
				}
			}
		}
	}
}
