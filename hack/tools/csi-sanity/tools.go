//go:build tools

// Package tools pins the csi-sanity command (kubernetes-csi/csi-test), which
// hack/csi-sanity.sh runs against the flashpv binary.
package tools

import _ "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity"
