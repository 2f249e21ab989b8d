// Command courier is the sidecar that runs next to an OpenBazaar node: it
// keeps the node's one relay connection, queues in SQLite and falls back to
// the node's OFFLINE path whenever the relay cannot confirm a delivery.
//
//	courier -config /etc/courier/courier.toml   run the sidecar
//	courier status -config FILE                 print a running sidecar's status
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time: -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "courier:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "status":
			return runStatus(ctx, args[1:], stdout, stderr)
		case "version":
			fmt.Fprintln(stdout, "courier", version)
			return nil
		}
	}
	return runSidecar(ctx, args, stderr)
}
