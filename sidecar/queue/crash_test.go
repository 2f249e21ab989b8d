package queue

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// crashChildEnv names the queue file a child process of TestCrashSafety
// writes to.
const crashChildEnv = "COURIER_QUEUE_CRASH_CHILD"

// TestCrashSafety: a child process enqueues from several goroutines and
// prints each ID once Enqueue has returned; the test SIGKILLs it mid-stream
// and reopens the file. Every printed ID must be there: nothing
// acknowledged is lost.
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Skip("no executable to re-run:", err)
	}
	path := filepath.Join(t.TempDir(), "courier.db")

	cmd := exec.Command(exe, "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()

	const killAfter = 300
	var acked []string
	r := bufio.NewReader(stdout)
	for {
		line, err := r.ReadString('\n')
		if err == io.EOF {
			break // a partial last line was cut by the kill: not acknowledged
		}
		if err != nil {
			t.Fatal(err)
		}
		if id, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "ID "); ok {
			acked = append(acked, id)
		}
		if len(acked) == killAfter && !killed {
			// Kill it mid-stream; keep reading what it printed before.
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	err = cmd.Wait()
	if !killed {
		t.Fatalf("child ended before printing %d IDs (%d): %v", killAfter, len(acked), err)
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want killed by SIGKILL", err)
	}

	q, err := Open(path, Options{Logger: quiet})
	if err != nil {
		t.Fatalf("reopen after the crash: %v", err)
	}
	defer q.Close()
	var check string
	if err := q.rdb.QueryRow("PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Errorf("integrity_check = %q, %v", check, err)
	}
	for _, id := range acked {
		if _, err := q.Get(context.Background(), id); err != nil {
			t.Errorf("acknowledged %s lost: %v", id, err)
		}
	}
	c, err := q.Counts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d acknowledged before the kill, %d in the queue after it", len(acked), c.State(Queued))
}

// TestCrashChild is TestCrashSafety's child process; it does nothing in a
// normal run.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(crashChildEnv)
	if path == "" {
		t.Skip("only run by TestCrashSafety")
	}
	q, err := Open(path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	var n atomic.Uint64
	var out sync.Mutex
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				ct := make([]byte, 512)
				rand.Read(ct)
				m, _, err := q.Enqueue(context.Background(), testRecipient, ct)
				if err != nil {
					fmt.Fprintln(os.Stderr, "child:", err)
					os.Exit(2)
				}
				out.Lock()
				fmt.Fprintf(os.Stdout, "ID %s\n", m.ID) // one write: a line is whole or absent
				out.Unlock()
				if n.Add(1) > 100000 {
					return
				}
			}
		})
	}
	// The parent kills us long before this.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
	}
	os.Exit(3)
}
