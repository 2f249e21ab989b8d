// Command courier is the sidecar that runs next to an OpenBazaar node: it
// keeps the node's one relay connection, queues in SQLite and falls back to
// the node's OFFLINE path whenever the relay cannot confirm a delivery.
//
//	courier -config /etc/courier/courier.toml   run the sidecar
//	courier status -config FILE                 print a running sidecar's status
//	courier version                             print the version
//
// The program is a Main (see sidecar.go) that tests drive in-process.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time: -ldflags "-X main.version=…".
var version = "dev"

func main() { os.Exit(runProcess(nil)) }

// runProcess is main: run until SIGTERM or SIGINT, print the error, return
// the exit code. opened, when not nil, is told the open Main (the test
// binary reports the bound address through it).
func runProcess(opened func(*Main)) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := runWith(ctx, os.Args[1:], os.Stdout, os.Stderr, opened)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "courier:", err)
		return 1
	}
	return 0
}

// run is the whole program: a subcommand, or the sidecar until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runWith(ctx, args, stdout, stderr, nil)
}

func runWith(ctx context.Context, args []string, stdout, stderr io.Writer, opened func(*Main)) error {
	if len(args) > 0 {
		switch args[0] {
		case "status":
			return runStatus(ctx, args[1:], stdout, stderr)
		case "version":
			fmt.Fprintln(stdout, "courier", version)
			return nil
		}
	}
	m := NewMain(stderr)
	if err := m.ParseFlags(args, stdout); err != nil {
		if errors.Is(err, errHelp) {
			return nil
		}
		return err
	}
	if err := m.Open(); err != nil {
		return err
	}
	if opened != nil {
		opened(m)
	}
	return errors.Join(m.Run(ctx), m.Close())
}
