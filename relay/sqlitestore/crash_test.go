package sqlitestore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"courier/relay"
	"courier/relay/storetest"
)

// crashChildEnv, when set, makes TestCrashSafety act as the child process
// that writes until it is killed; its value is the database path.
const crashChildEnv = "COURIER_SQLITESTORE_CRASH_CHILD"

// TestCrashSafety proves that an acknowledged write survives kill -9: a
// child process (this test binary, re-executed) puts and acks as fast as it
// can and prints each write once its result has arrived; the test SIGKILLs
// it mid-stream, reopens the database and finds every printed write.
func TestCrashSafety(t *testing.T) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path)
		return
	}
	if testing.Short() {
		t.Skip("starts a child process")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "relay.db")
	puts := make(map[string]int64) // message ID → Seq
	acks := make(map[string]bool)
	// Several rounds on the same database: each kill lands at another point
	// of a batch's life, and what earlier rounds acknowledged must survive
	// the later crashes (and the recoveries in between) too.
	const rounds = 5
	for round := range rounds {
		crashRound(t, exe, path, puts, acks)
		if t.Failed() {
			return
		}
		t.Logf("round %d: child killed; %d puts, %d acks acknowledged so far", round, len(puts), len(acks))
	}

	s, err := Open(path, Options{Logger: quiet})
	if err != nil {
		t.Fatalf("reopen after kill -9: %v", err)
	}
	defer s.Close()
	found := make(map[string]int64)
	unacked := make(map[string]bool)
	for _, p := range crashPeers() {
		for _, m := range storetest.AllPending(t, s, storetest.Anonymous("checker"), p.Key) {
			found[m.ID] = m.Seq
		}
		for _, m := range storetest.AllPending(t, s, p.Sub(), p.Key) {
			unacked[m.ID] = true
		}
	}
	lost := 0
	for id, seq := range puts {
		if got, ok := found[id]; !ok || got != seq {
			lost++
			if lost <= 5 {
				t.Errorf("acknowledged put %s (Seq %d) after the crash: found=%v Seq %d", id[:12], seq, ok, got)
			}
		}
	}
	for id := range acks {
		if unacked[id] {
			lost++
			if lost <= 5 {
				t.Errorf("acknowledged recipient ack of %s lost in the crash", id[:12])
			}
		}
	}
	if lost > 0 {
		t.Errorf("%d acknowledged writes lost", lost)
	}
	checkUsage(t, s)
}

// crashRound runs one child until it has acknowledged enough new writes,
// kills it with SIGKILL and records every write it printed.
func crashRound(t *testing.T, exe, path string, puts map[string]int64, acks map[string]bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^TestCrashSafety$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	// Kill once enough has been acknowledged; keep reading what the child
	// wrote before it died.
	const killAfterPuts, killAfterAcks = 100, 30
	newPuts, newAcks := 0, 0
	killed := false
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 3 && f[0] == "put":
			seq, err := strconv.ParseInt(f[2], 10, 64)
			if err != nil {
				t.Fatalf("child printed %q", sc.Text())
			}
			puts[f[1]] = seq
			newPuts++
		case len(f) == 2 && f[0] == "ack":
			acks[f[1]] = true
			newAcks++
		default:
			t.Fatalf("child printed %q", sc.Text())
		}
		if !killed && newPuts >= killAfterPuts && newAcks >= killAfterAcks {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if !killed || !errors.As(err, &exit) {
		t.Fatalf("child ended by itself (%v) after %d puts, %d acks; stderr:\n%s", err, newPuts, newAcks, stderr.String())
	}
	if ws, ok := exit.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child: %v, want killed by SIGKILL; stderr:\n%s", err, stderr.String())
	}
}

func crashPeers() []storetest.Peer {
	return []storetest.Peer{storetest.NewPeer(1), storetest.NewPeer(2), storetest.NewPeer(3)}
}

// crashChild is the child side of TestCrashSafety. It never returns
// normally: it is killed, or gives up after a minute with exit status 3.
func crashChild(path string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(2)
	}
	s, err := Open(path, Options{Logger: quiet})
	if err != nil {
		fail(err)
	}
	time.AfterFunc(time.Minute, func() {
		fmt.Fprintln(os.Stderr, "crash child: not killed within a minute")
		os.Exit(3)
	})
	var out sync.Mutex
	emit := func(format string, args ...any) {
		out.Lock()
		defer out.Unlock()
		// One unbuffered write per line: once it returns, the line is in the
		// pipe, where the kill cannot take it back.
		if _, err := fmt.Fprintf(os.Stdout, format+"\n", args...); err != nil {
			os.Exit(4)
		}
	}
	peers := crashPeers()
	const writers = 16
	for w := range writers {
		go func() {
			for i := 0; ; i++ {
				p := peers[(w+i)%len(peers)]
				m := storetest.NewMessage(p, fmt.Sprintf("crash child %d writer %d message %d", os.Getpid(), w, i))
				r := <-s.Put(m, nil)
				if r.Err != nil {
					fail(r.Err)
				}
				emit("put %s %d", m.ID, r.Message.Seq)
				if i%2 == 0 {
					// Ack every other message by its recipient and without
					// waiting for it, an anonymous ack in the same batch.
					ack := s.Ack(p.Sub(), m.ID)
					s.Ack(relay.Subscriber{ID: "anon"}, m.ID)
					if a := <-ack; a.Err != nil || !a.ByRecipient {
						fail(fmt.Errorf("ack: %+v", a))
					}
					emit("ack %s", m.ID)
				}
			}
		}()
	}
	select {}
}
