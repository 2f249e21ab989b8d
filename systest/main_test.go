// Package systest holds the system tests: the built binaries (courier-relay,
// courier, devnode) run as separate processes on loopback, with real SQLite
// files and, for the light client, real headless Chromium. Each scenario
// checks with the devnodes what arrived: nothing lost, nothing duplicated.
package systest

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"courier/internal/cluster"
)

// bins are built once for every scenario, with the race detector.
var bins cluster.Binaries

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	root, err := cluster.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "systest:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "courier-systest-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "systest:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if bins, err = cluster.Build(ctx, root, dir, true); err != nil {
		fmt.Fprintln(os.Stderr, "systest:", err)
		return 1
	}
	return m.Run()
}
