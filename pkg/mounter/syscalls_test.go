package mounter

import (
	"errors"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseMountOptions(t *testing.T) {
	for _, tc := range []struct {
		opts  []string
		flags uintptr
		data  []string
		bad   bool
	}{
		{opts: nil},
		{opts: []string{"defaults"}},
		{opts: []string{"ro", "noatime"}, flags: unix.MS_RDONLY | unix.MS_NOATIME},
		{opts: []string{"ro,nosuid,nodev"}, flags: unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV},
		{opts: []string{"ro", "rw"}},
		{opts: []string{"noexec", "exec", "sync"}, flags: unix.MS_SYNCHRONOUS},
		{opts: []string{"discard", "noatime", "data=ordered"}, flags: unix.MS_NOATIME, data: []string{"discard", "data=ordered"}},
		{opts: []string{" lazytime , "}, flags: unix.MS_LAZYTIME},
		{opts: []string{"bind"}, bad: true},
		{opts: []string{"remount,ro"}, bad: true},
		{opts: []string{"x-systemd.automount"}, bad: true},
		{opts: []string{"loop=/dev/loop7"}, bad: true},
	} {
		flags, data, err := parseMountOptions(tc.opts)
		if tc.bad {
			if !errors.Is(err, ErrOption) {
				t.Errorf("%q: got %v, want an ErrOption", tc.opts, err)
			}
			continue
		}
		if err != nil || flags != tc.flags || !slices.Equal(data, tc.data) {
			t.Errorf("%q: got %#x %q %v, want %#x %q", tc.opts, flags, data, err, tc.flags, tc.data)
		}
	}
}
