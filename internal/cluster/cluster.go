// Package cluster starts a Courier system made of real processes on
// loopback: courier-relay, courier sidecars and devnode stand-in nodes,
// each from its built binary, each with its own files in one directory.
// It can kill -9, restart and reconfigure them. The system tests and
// `make demo` drive it; it is not for production use.
package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Binaries are the paths of the built programs.
type Binaries struct {
	Relay, Sidecar, DevNode string
}

// Build compiles the three programs into dir, with the race detector when
// race is set. moduleRoot is the directory holding go.mod.
func Build(ctx context.Context, moduleRoot, dir string, race bool) (Binaries, error) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	args := []string{"build", "-o", dir + string(os.PathSeparator)}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/courier-relay", "./cmd/courier", "./cmd/devnode")
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = moduleRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return Binaries{}, fmt.Errorf("go build: %w\n%s", err, out)
	}
	return Binaries{
		Relay:   filepath.Join(dir, "courier-relay"),
		Sidecar: filepath.Join(dir, "courier"),
		DevNode: filepath.Join(dir, "devnode"),
	}, nil
}

// ModuleRoot finds the directory with go.mod, walking up from the current
// directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the current directory")
		}
		dir = parent
	}
}

// Cluster owns every process it started; Close stops them all.
type Cluster struct {
	Dir  string
	Bins Binaries
	// StartTimeout bounds how long a process may take to say where it
	// listens; default 30s.
	StartTimeout time.Duration

	mu    sync.Mutex
	procs []*Proc
}

// New returns a cluster that keeps its files in dir.
func New(dir string, bins Binaries) *Cluster {
	return &Cluster{Dir: dir, Bins: bins, StartTimeout: 30 * time.Second}
}

// Close stops every running process: SIGTERM, then SIGKILL for those that
// do not exit within a few seconds. It returns the first failure to exit
// cleanly.
func (c *Cluster) Close() error {
	c.mu.Lock()
	procs := append([]*Proc(nil), c.procs...)
	c.mu.Unlock()
	var first error
	for i := len(procs) - 1; i >= 0; i-- { // reverse start order: clients before servers
		if err := procs[i].Stop(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Procs lists the processes the cluster started, in start order.
func (c *Cluster) Procs() []*Proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Proc(nil), c.procs...)
}

// childEnv is the environment of the programs: this process's, and for
// binaries built with -race, no sleep at exit (the race runtime's default
// atexit_sleep_ms=1000 added a second to every stop; a race found still
// fails the process: exit status 66), unless GORACE is set already.
func childEnv() []string {
	env := os.Environ()
	if _, ok := os.LookupEnv("GORACE"); !ok {
		env = append(env, "GORACE=atexit_sleep_ms=0")
	}
	return env
}

// Proc is one running program. Its stdout and stderr go to Log.
type Proc struct {
	Name string
	Log  string // file with everything the process printed

	c       *Cluster
	bin     string
	args    []string
	addrRE  *regexp.Regexp
	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error
	addr    string
	line    string // the line that announced the address
}

// start runs the program and waits until its output matches addrRE, whose
// first group is the address it listens on.
func (c *Cluster) start(ctx context.Context, name, bin string, args []string, addrRE *regexp.Regexp) (*Proc, error) {
	p := &Proc{Name: name, Log: filepath.Join(c.Dir, name+".log"), c: c, bin: bin, args: args, addrRE: addrRE}
	if err := p.run(ctx); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p, nil
}

func (p *Proc) run(ctx context.Context) error {
	logf, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== %s %s %s\n", time.Now().Format(time.RFC3339Nano), p.bin, strings.Join(p.args, " "))
	pr, pw := io.Pipe()
	cmd := exec.Command(p.bin, p.args...)
	cmd.Dir = p.c.Dir
	cmd.Env = childEnv()
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	found := make(chan [2]string, 1)
	exited := make(chan struct{})
	go func() { // copies output to the log, watching for the address
		defer logf.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		announced := false
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if !announced {
				if m := p.addrRE.FindStringSubmatch(line); m != nil {
					announced = true
					found <- [2]string{m[1], line}
				}
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		p.mu.Lock()
		p.exitErr = err
		p.mu.Unlock()
		close(exited)
	}()
	p.mu.Lock()
	p.cmd, p.exited = cmd, exited
	p.mu.Unlock()

	timeout := time.NewTimer(p.c.StartTimeout)
	defer timeout.Stop()
	select {
	case m := <-found:
		p.mu.Lock()
		p.addr, p.line = m[0], m[1]
		p.mu.Unlock()
		return nil
	case <-exited:
		return fmt.Errorf("%s exited before it listened: %v\n%s", p.Name, p.exitErrValue(), p.Tail(20))
	case <-timeout.C:
		_ = p.Kill()
		return fmt.Errorf("%s did not say where it listens within %s\n%s", p.Name, p.c.StartTimeout, p.Tail(20))
	case <-ctx.Done():
		_ = p.Kill()
		return ctx.Err()
	}
}

func (p *Proc) exitErrValue() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitErr
}

// Addr is the host:port the process listens on.
func (p *Proc) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addr
}

// Running reports whether the process is alive.
func (p *Proc) Running() bool {
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() error {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	return nil
}

// Stop sends SIGTERM and waits; a process still running after 15 s is
// killed. It returns an error unless the process exited 0 (or had already
// exited).
func (p *Proc) Stop() error {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil || !p.Running() {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		_ = p.Kill()
		return fmt.Errorf("%s did not exit within 15s of SIGTERM; killed", p.Name)
	}
	if err := p.exitErrValue(); err != nil {
		return fmt.Errorf("%s exited after SIGTERM: %w\n%s", p.Name, err, p.Tail(10))
	}
	return nil
}

// Restart starts the process again with the same arguments. Callers that
// need the same address pass it in the arguments (the starters here do).
func (p *Proc) Restart(ctx context.Context) error {
	if p.Running() {
		return fmt.Errorf("%s is still running", p.Name)
	}
	return p.run(ctx)
}

// Tail returns the last n lines of the process's log.
func (p *Proc) Tail(n int) string {
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// PeakRSS returns the process's peak resident set size (VmHWM) in bytes,
// read from /proc; Linux only.
func (p *Proc) PeakRSS() (int64, error) {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return 0, errors.New("not started")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb); err != nil {
				return 0, fmt.Errorf("parse VmHWM %q: %w", v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("no VmHWM in /proc status")
}
