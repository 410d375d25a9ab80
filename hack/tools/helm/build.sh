#!/usr/bin/env bash
# Builds the helm CLI (Helm v4, the version this module pins) into
# _output/bin/helm, once: it is rebuilt only when go.mod or go.sum here
# change or the binary is gone. `make test` runs it before the deploy tests
# (test/deploy renders the chart with it), hack/cluster/deploy.sh before a
# Helm install. BIN overrides the output directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${BIN:-$(cd "$here/../../.." && pwd)/_output/bin}
stamp=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)
if [ -x "$bin/helm" ] && [ "$(cat "$bin/.helm.stamp" 2>/dev/null)" = "$stamp" ]; then
	exit 0
fi
cd "$here"
version=$(go list -m -f '{{.Version}}' helm.sh/helm/v4)
echo "building helm $version into $bin (cached after the first time)" >&2
mkdir -p "$bin"
CGO_ENABLED=0 go build -trimpath \
	-ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$version -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
	-o "$bin/helm.tmp" helm.sh/helm/v4/cmd/helm
mv "$bin/helm.tmp" "$bin/helm"
echo "$stamp" >"$bin/.helm.stamp"
