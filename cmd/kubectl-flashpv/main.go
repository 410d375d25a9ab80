// Command kubectl-flashpv is the kubectl plugin `kubectl flashpv`
// (pkg/kubectlflashpv): put it on the PATH and run `kubectl flashpv info`.
package main

import (
	"os"

	"github.com/flashpv/flashpv/pkg/kubectlflashpv"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(kubectlflashpv.Main(os.Args[1:], version, os.Stdout, os.Stderr))
}
