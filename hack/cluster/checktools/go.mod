// checktools: verifies that hack/cluster/install-deps.sh installs every
// program the local cluster harness runs or copies (make verify-cluster).
module github.com/flashpv/flashpv/hack/cluster/checktools

go 1.26.8

require mvdan.cc/sh/v3 v3.14.1
