// Command devnode is a stand-in OpenBazaar node for demos and system tests
// (package courier/devnode).
//
//	devnode [serve] [-listen ADDR] [-identity FILE] [-sidecar URL] [-offline-dir DIR [-offline-poll D]]
//	devnode send -node URL (-to PEER [-to-pubkey HEX] | -to-pubkey HEX) -text TEXT [-subject S] [-wait D]
//	devnode id (-identity FILE | -node URL)
//	devnode version
//
// serve prints one line to stdout once it listens, for scripts to parse:
//
//	peer_id=Qm… pubkey=<hex marshalled key> listen=127.0.0.1:4002
//
// and logs to stderr. With -offline-dir, the node joins a simulated OFFLINE
// network (devnode.OfflineStore): its OFFLINE endpoint publishes into the
// directory, and it polls the directory for messages to itself every
// -offline-poll (default 1m, as openbazaar-go). Such a node needs no
// sidecar: it is a node that does not use Courier. SIGINT or SIGTERM shut it down gracefully. send asks
// a running devnode (its control API at -node) to seal a chat message and
// post it to its sidecar, and prints "id=… state=… recipient=…". id prints
// the peer ID and public key of an identity file (creating it if missing)
// or of a running devnode.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"courier/devnode"
	"courier/wire"
)

var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "devnode:", err)
		os.Exit(1)
	}
}

// errHelp is returned for -h: nothing to run.
var errHelp = errors.New("help requested")

// run is the whole program: pick the subcommand and run it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serve(ctx, args, stdout, stderr)
	case "send":
		err = send(ctx, args, stdout)
	case "id":
		err = id(ctx, args, stdout)
	case "version":
		fmt.Fprintln(stdout, "devnode", version)
	default:
		err = fmt.Errorf("unknown command %q: want serve, send, id or version", cmd)
	}
	if errors.Is(err, errHelp) {
		return nil
	}
	return err
}

// parse parses a subcommand's flags, printing usage to stdout for -h.
func parse(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	var usage bytes.Buffer
	fs.SetOutput(&usage)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			_, _ = io.Copy(stdout, &usage)
			return errHelp
		}
		return fmt.Errorf("%v\n%s", err, usage.String())
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: devnode %s takes only flags", fs.Args(), fs.Name())
	}
	return nil
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	m := NewMain(stderr)
	if err := m.ParseFlags(args, stdout); err != nil {
		return err
	}
	if err := m.Open(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "peer_id=%s pubkey=%s listen=%s\n", m.Node.PeerID(), m.Node.PubKeyHex(), m.Addr())
	var serveErr error
	select {
	case <-ctx.Done():
		m.Logger.Info("signal received: shutting down")
	case serveErr = <-m.serveErr:
		m.Logger.Error("serving failed: shutting down", "err", serveErr)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return errors.Join(serveErr, m.Close(sctx))
}

// Main is devnode serve as a value that tests can drive: ParseFlags, Open,
// Addr, Close.
type Main struct {
	Listen  string          // default 127.0.0.1:4002
	Options devnode.Options // identity file, sidecar URL, logger
	Logger  *slog.Logger
	Node    *devnode.Node // set by Open
	// Wrap, when set, wraps the server's handler (for tests that need to
	// know a request has reached its handler: a connection the server has
	// read a request from, StateActive, may still be dropped unanswered by
	// a shutdown that begins before the handler is called).
	Wrap func(http.Handler) http.Handler

	stderr     io.Writer
	ln         net.Listener
	httpSrv    *http.Server
	cancelReqs context.CancelFunc // ends long polls at shutdown
	stopPoll   context.CancelFunc // ends the OFFLINE poll loop
	pollDone   chan struct{}      // closed when the poll loop has returned
	serveErr   chan error
	closed     bool
}

// NewMain returns a Main with the defaults, logging to stderr.
func NewMain(stderr io.Writer) *Main {
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	return &Main{
		Listen:   "127.0.0.1:4002",
		Options:  devnode.Options{Logger: logger},
		Logger:   logger,
		stderr:   stderr,
		serveErr: make(chan error, 1),
	}
}

// ParseFlags reads serve's command line.
func (m *Main) ParseFlags(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&m.Listen, "listen", m.Listen, "listen `address` for the node endpoints and the control API")
	fs.StringVar(&m.Options.IdentityFile, "identity", "", "identity `file`, created if missing (default: a fresh identity, not saved)")
	fs.StringVar(&m.Options.SidecarURL, "sidecar", "", "base `URL` of the sidecar's local API, e.g. http://127.0.0.1:4100 (needed to send)")
	fs.StringVar(&m.Options.OfflineDir, "offline-dir", "", "`directory` of the simulated OFFLINE network shared by devnodes (default: none)")
	fs.DurationVar(&m.Options.OfflinePoll, "offline-poll", time.Minute, "how often to poll the OFFLINE network for messages to this node")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	if m.Options.OfflinePoll <= 0 {
		return fmt.Errorf("-offline-poll %s: want a positive duration such as 1m or 200ms", m.Options.OfflinePoll)
	}
	return nil
}

// Open builds the node, binds the listener and starts serving; failures
// (a bad identity file, the address in use) are returned at once.
func (m *Main) Open() error {
	n, err := devnode.New(m.Options)
	if err != nil {
		return err
	}
	m.Node = n
	if m.Options.IdentityFile == "" {
		m.Logger.Warn("no -identity file: this peer ID lasts until exit", "peer_id", n.PeerID())
	}
	ln, err := net.Listen("tcp", m.Listen)
	if err != nil {
		return err
	}
	m.ln = ln
	reqCtx, cancel := context.WithCancel(context.Background())
	m.cancelReqs = cancel
	h := n.Handler()
	if m.Wrap != nil {
		h = m.Wrap(h)
	}
	m.httpSrv = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return reqCtx },
		ErrorLog:          slog.NewLogLogger(m.Logger.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := m.httpSrv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			m.serveErr <- err
		}
	}()
	pollCtx, stopPoll := context.WithCancel(context.Background())
	m.stopPoll, m.pollDone = stopPoll, make(chan struct{})
	go func() {
		defer close(m.pollDone)
		n.RunOfflinePoll(pollCtx)
	}()
	m.Logger.Info("devnode listening", "addr", ln.Addr().String(), "peer_id", n.PeerID(),
		"sidecar", m.Options.SidecarURL, "offline_dir", m.Options.OfflineDir,
		"offline_poll", n.OfflinePollInterval().String(), "version", version)
	return nil
}

// Addr is the address the node listens on (the port chosen for :0).
func (m *Main) Addr() string { return m.ln.Addr().String() }

// Close ends long polls, then shuts the server down, waiting for requests in
// flight until ctx ends. It is safe to call more than once.
func (m *Main) Close(ctx context.Context) error {
	if m.closed || m.httpSrv == nil {
		return nil
	}
	m.closed = true
	m.cancelReqs()
	m.stopPoll()
	<-m.pollDone
	return m.httpSrv.Shutdown(ctx)
}

func send(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	node := fs.String("node", "http://127.0.0.1:4002", "`URL` of the running devnode that sends")
	var req devnode.SendRequest
	fs.StringVar(&req.ToPeer, "to", "", "recipient `peer ID` (Qm… needs -to-pubkey; 12D3Koo… does not)")
	fs.StringVar(&req.ToPubKey, "to-pubkey", "", "recipient public key, `hex` (raw 32 bytes or marshalled)")
	fs.StringVar(&req.Text, "text", "", "message `text`")
	fs.StringVar(&req.Subject, "subject", "", "chat `subject`")
	wait := fs.Duration("wait", 0, "wait up to this `duration` for a final state (delivered, handed_off, failed)")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	if _, err := devnode.ParseRecipient(req.ToPeer, req.ToPubKey); err != nil {
		return fmt.Errorf("recipient: %w", err)
	}
	body := struct {
		devnode.SendRequest
		Wait string `json:"wait,omitempty"`
	}{SendRequest: req}
	if *wait > 0 {
		body.Wait = wait.String()
	}
	var res devnode.SendResult
	if err := control(ctx, http.MethodPost, *node, "/devnode/send", body, &res, *wait); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "id=%s state=%s recipient=%s\n", res.ID, res.State, res.Recipient)
	if res.State == "failed" {
		return fmt.Errorf("message %s failed: %s", res.ID, res.LastError)
	}
	return nil
}

func id(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("id", flag.ContinueOnError)
	identity := fs.String("identity", "", "identity `file`, created if missing")
	node := fs.String("node", "", "`URL` of a running devnode")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	var out struct {
		PeerID         string `json:"peer_id"`
		IdentityPeerID string `json:"identity_peer_id"`
		PubKey         string `json:"pubkey"`
	}
	switch {
	case (*identity == "") == (*node == ""):
		return errors.New("give exactly one of -identity FILE and -node URL")
	case *identity != "":
		n, err := devnode.New(devnode.Options{IdentityFile: *identity})
		if err != nil {
			return err
		}
		ident, err := wire.IdentityPeerID(n.MarshalledPublicKey())
		if err != nil {
			return err
		}
		out.PeerID, out.IdentityPeerID, out.PubKey = n.PeerID(), ident.String(), n.PubKeyHex()
	default:
		if err := control(ctx, http.MethodGet, *node, "/devnode/id", nil, &out, 0); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "peer_id=%s identity_peer_id=%s pubkey=%s\n", out.PeerID, out.IdentityPeerID, out.PubKey)
	return nil
}

// control calls a running devnode's control API.
func control(ctx context.Context, method, base, path string, in, out any, wait time.Duration) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(base, "/")+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	client := &http.Client{Timeout: 30*time.Second + min(wait, devnode.MaxWait)}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s %s: %d: %s", method, path, resp.StatusCode, e.Error)
		}
		return fmt.Errorf("%s %s: %d: %s", method, path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return json.Unmarshal(b, out)
}
