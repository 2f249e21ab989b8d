// Package dantetest starts a real SOCKS5 server for tests: Debian's Dante
// (danted, package dante-server), on a free loopback port, configured by
// the test and stopped when it ends.
//
// Two settings make what a SOCKS5 client does observable:
//   - External: the address Dante connects out from (such as 127.0.0.2),
//     so that a server behind it can tell the proxy's connections from the
//     client's own (127.0.0.1).
//   - Hosts: names only Dante can resolve. Dante runs in a mount namespace
//     of its own where a hosts file of the test's is bound over /etc/hosts,
//     so a name such as "relay.courier-test.invalid" resolves there and
//     nowhere else: a client that reaches it through Dante has left the
//     name to the proxy. This needs root (unshare --mount); tests that use
//     it skip, saying so, when not root.
//
// Tests skip, saying so, only where danted is not installed; .ci/run
// installs it and fails without it. Only tests import this package.
package dantetest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"courier/internal/syncbuf"
)

// startTimeout bounds the wait for Dante to listen.
const startTimeout = 15 * time.Second

// Options configure the server.
type Options struct {
	// External is the local address Dante's outgoing connections come
	// from. Default "127.0.0.1".
	External string
	// Hosts maps host names to IP addresses in Dante's own /etc/hosts.
	// Default none (Dante sees the machine's /etc/hosts).
	Hosts map[string]string
	// Username makes Dante require username/password authentication
	// (RFC 1929) against the system's accounts; the tests use it to see
	// a proxy refuse a client. Default: no authentication.
	Username bool
	// Port is the port to listen on, such as that of a server stopped
	// earlier in the test (a proxy that comes back). Default: a free one.
	Port int
}

// Server is a running danted.
type Server struct {
	Addr string // host:port it listens on, 127.0.0.1
	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	done chan struct{}
	once sync.Once
}

// URL is the server's address as a relay_proxy value with scheme
// (socks5 or socks5h) and user info userinfo (such as "user:password@",
// or "").
func (s *Server) URL(scheme, userinfo string) string {
	return scheme + "://" + userinfo + s.Addr
}

// Log returns what Dante has logged so far.
func (s *Server) Log() string { return s.out.String() }

// Start starts danted, stopped when the test ends. It skips the test where
// danted is not installed, or where opts.Hosts is set and the test does not
// run as root.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bin, err := exec.LookPath("danted")
	if err != nil {
		if _, err = os.Stat("/usr/sbin/danted"); err != nil {
			t.Skip("danted is not installed (apt-get install dante-server); skipping the SOCKS5 proxy tests")
		}
		bin = "/usr/sbin/danted"
	}
	if len(opts.Hosts) > 0 && os.Geteuid() != 0 {
		t.Skip("a hosts file only the proxy sees needs a mount namespace (unshare --mount), which needs root; skipping")
	}
	if opts.External == "" {
		opts.External = "127.0.0.1"
	}
	dir := t.TempDir()
	var lastErr error
	for range 5 { // the port was free a moment ago; another process may take it first
		port := opts.Port
		if port == 0 {
			port = freePort(t)
		}
		s, err := start(t, bin, dir, port, opts)
		if err == nil {
			return s
		}
		lastErr = err
		time.Sleep(200 * time.Millisecond) // a fixed port may take a moment to be free again
	}
	t.Fatalf("danted did not start: %v", lastErr)
	return nil
}

func start(t testing.TB, bin, dir string, port int, opts Options) (*Server, error) {
	method := "none"
	if opts.Username {
		method = "username"
	}
	conf := fmt.Sprintf(`logoutput: stderr
debug: 0
internal: 127.0.0.1 port = %d
external: %s
clientmethod: none
socksmethod: %s
user.privileged: root
user.unprivileged: nobody
client pass {
	from: 127.0.0.0/8 to: 0.0.0.0/0
	log: error connect disconnect
}
socks pass {
	from: 127.0.0.0/8 to: 0.0.0.0/0
	log: error connect disconnect
}
`, port, opts.External, method)
	confFile := filepath.Join(dir, "danted.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{bin, "-f", confFile, "-p", filepath.Join(dir, "danted.pid"), "-N", "1"}
	if len(opts.Hosts) > 0 {
		hosts := filepath.Join(dir, "hosts")
		names := make([]string, 0, len(opts.Hosts))
		for n := range opts.Hosts {
			names = append(names, n)
		}
		sort.Strings(names)
		var b strings.Builder
		b.WriteString("127.0.0.1 localhost\n")
		for _, n := range names {
			fmt.Fprintf(&b, "%s %s\n", opts.Hosts[n], n)
		}
		if err := os.WriteFile(hosts, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		// The bind mount lives in the new namespace only; exec keeps the
		// PID, so the process the test stops is danted itself.
		args = append([]string{"unshare", "--mount", "--propagation", "private", "--",
			"sh", "-c", `mount --bind "$0" /etc/hosts && exec "$@"`, hosts}, args...)
	}
	out := new(syncbuf.Buffer)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so that Stop reaches Dante's child processes
	// too; and killed if the test binary dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", args[0], err)
	}
	s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(s.done)
	}()
	deadline := time.Now().Add(startTimeout)
	for {
		// Listening, and Dante's own word that it runs: the port is
		// not someone else's.
		c, err := net.DialTimeout("tcp", s.Addr, time.Second)
		if err == nil {
			c.Close()
			if strings.Contains(out.String(), " running") {
				break
			}
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("danted exited: %s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("danted did not listen on %s within %s: %s", s.Addr, startTimeout, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(s.Stop)
	return s, nil
}

// Stop stops Dante (SIGTERM to its process group, its children with open
// sessions included, which the main process alone would wait for; SIGKILL
// after 5 s) and waits for it. Idempotent.
func (s *Server) Stop() {
	s.once.Do(func() {
		pgid := s.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-s.done
		}
		// Children that outlived the main process.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	})
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
