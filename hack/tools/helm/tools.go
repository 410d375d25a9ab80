//go:build tools

// Package tools pins the helm CLI (Helm v4), which the deploy tests
// (test/deploy) and hack/cluster/deploy.sh (FLASHPV_DEPLOY=helm) run.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
