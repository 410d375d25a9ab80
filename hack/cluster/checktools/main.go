package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	repo := flag.String("repo", "../../..", "the repository")
	flag.Parse()
	problems, err := Check(*repo)
	if err != nil {
		fmt.Fprintln(os.Stderr, "checktools:", err)
		os.Exit(2)
	}
	for _, p := range problems {
		fmt.Fprintln(os.Stderr, p)
	}
	if len(problems) > 0 {
		fmt.Fprintf(os.Stderr, "checktools: %d problems in the local cluster harness\n", len(problems))
		os.Exit(1)
	}
	fmt.Println("checktools: every program the local cluster harness runs or copies is installed by hack/cluster/install-deps.sh")
}
