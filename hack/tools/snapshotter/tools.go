//go:build tools

// Package tools pins csi-snapshotter and snapshot-controller, and the
// client module whose config/crd holds the VolumeSnapshot CRDs that
// hack/cluster/deploy.sh applies.
package tools

import (
	_ "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter"
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller"
)
