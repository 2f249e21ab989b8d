// Package redistest starts a real redis-server for tests: on a Unix socket
// in the test's temporary directory (no port to race for), with
// appendonly yes and its files in that directory. Tests that need it skip,
// saying so, only where redis-server is not installed.
package redistest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a running redis-server.
type Server struct {
	t      testing.TB
	Dir    string
	Socket string // the Unix socket
	Port   int    // the TCP port on 127.0.0.1, when started with TCP
	cmd    *exec.Cmd
	out    *bytes.Buffer
	args   []string
	bin    string
}

// Options for Start.
type Options struct {
	// TCP also listens on a free loopback port (for processes such as
	// haproxy health checks that want TCP; Unix sockets serve the relays).
	TCP bool
	// Fsync is the appendfsync setting: "always" (default) or "everysec".
	Fsync string
	// Args are more redis-server arguments (such as --replicaof).
	Args []string
}

// Start starts redis-server, stopped (SIGKILL, then waited for) when the
// test ends. It skips the test where redis-server is absent.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed (apt-get install redis-server); skipping the Redis tests")
	}
	if opts.Fsync == "" {
		opts.Fsync = "always"
	}
	dir := t.TempDir()
	s := &Server{t: t, Dir: dir, Socket: filepath.Join(dir, "redis.sock")}
	port := "0"
	if opts.TCP {
		s.Port = freePort(t)
		port = strconv.Itoa(s.Port)
	}
	s.args = []string{
		"--port", port, "--bind", "127.0.0.1",
		"--unixsocket", s.Socket, "--unixsocketperm", "700",
		"--dir", dir, "--appendonly", "yes", "--appendfsync", opts.Fsync,
		"--save", "", "--daemonize", "no", "--loglevel", "warning",
	}
	s.args = append(s.args, opts.Args...)
	s.bin = bin
	s.start()
	t.Cleanup(s.Stop)
	return s
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func (s *Server) start() {
	s.t.Helper()
	s.out = new(bytes.Buffer)
	s.cmd = exec.Command(s.bin, s.args...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	setDeathSignal(s.cmd)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	c := s.Client()
	defer c.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.Stop()
			s.t.Fatalf("redis-server did not answer within 15s: %v\n%s", err, s.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Pid is the process ID of the running server (to read its CPU time).
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Addr is the server's TCP address (Options.TCP).
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

// URL is the server's address as a redis URL (the Unix socket).
func (s *Server) URL() string { return "unix://" + s.Socket }

// Client returns a new client of the server (close it).
func (s *Server) Client() *redis.Client {
	return redis.NewClient(&redis.Options{Network: "unix", Addr: s.Socket, MaxRetries: -1})
}

// Stop kills the server (SIGKILL: what it acknowledged is in its AOF) and
// waits for it. It is idempotent.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
	_ = os.Remove(s.Socket)
}

// Restart starts the server again on the same files, as after a crash.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// String describes the server for failure messages.
func (s *Server) String() string { return fmt.Sprintf("redis-server on %s", s.Socket) }

// Sentinel is a primary, a replica of it and three Sentinels watching it
// as MasterName, all on loopback TCP ports: Redis high availability.
type Sentinel struct {
	Primary, Replica *Server
	Addrs            []string // the Sentinels
	MasterName       string
	sentinels        []*exec.Cmd
}

// StartSentinel starts a primary, its replica and three Sentinels (quorum
// 2, primary down after 1s without answers), and waits until the replica
// is in sync and the Sentinels know it. Everything stops when the test ends.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	st := &Sentinel{MasterName: "courier"}
	st.Primary = Start(t, Options{TCP: true})
	st.Replica = Start(t, Options{TCP: true, Args: []string{"--replicaof", "127.0.0.1", strconv.Itoa(st.Primary.Port)}})
	for i := range 3 {
		dir := t.TempDir()
		port := freePort(t)
		conf := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor %s 127.0.0.1 %d 2\n"+
			"sentinel down-after-milliseconds %s 1000\nsentinel failover-timeout %s 5000\nsentinel parallel-syncs %s 1\n",
			port, dir, st.MasterName, st.Primary.Port, st.MasterName, st.MasterName, st.MasterName)
		path := filepath.Join(dir, fmt.Sprintf("sentinel%d.conf", i))
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(st.Primary.bin, path, "--sentinel")
		out := new(bytes.Buffer)
		cmd.Stdout, cmd.Stderr = out, out
		setDeathSignal(cmd)
		if err := cmd.Start(); err != nil {
			t.Fatalf("start sentinel: %v", err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			if t.Failed() {
				t.Logf("sentinel %d:\n%s", i, out)
			}
		})
		st.sentinels = append(st.sentinels, cmd)
		st.Addrs = append(st.Addrs, "127.0.0.1:"+strconv.Itoa(port))
	}
	// The replica in sync, and every Sentinel aware of it.
	deadline := time.Now().Add(30 * time.Second)
	ctx := context.Background()
	for {
		ok := true
		rc := redis.NewClient(&redis.Options{Addr: st.Replica.Addr()})
		info, err := rc.Info(ctx, "replication").Result()
		rc.Close()
		if err != nil || !bytes.Contains([]byte(info), []byte("master_link_status:up")) {
			ok = false
		}
		for _, a := range st.Addrs {
			sc := redis.NewSentinelClient(&redis.Options{Addr: a})
			reps, err := sc.Replicas(ctx, st.MasterName).Result()
			sc.Close()
			if err != nil || len(reps) == 0 {
				ok = false
			}
		}
		if ok {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("Sentinel setup not ready within 30s: replication %q, %v", info, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
