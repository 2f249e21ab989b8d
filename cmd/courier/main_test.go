package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"courier/localapi/apiclient"
	"courier/relay"
	"courier/sidecar"
	st "courier/sidecar/sidecartest"
	"courier/wire"
)

// childArgsEnv, when set, makes the test binary run as the courier program
// with these arguments (JSON), through runProcess as main does: the sidecar
// as shipped, in a process of its own that a test can kill. It reports its
// bound API address on file descriptor 3, once open.
const childArgsEnv = "COURIER_TEST_CHILD_ARGS"

func TestMain(m *testing.M) {
	if args := os.Getenv(childArgsEnv); args != "" {
		var a []string
		if err := json.Unmarshal([]byte(args), &a); err != nil {
			fmt.Fprintln(os.Stderr, "bad", childArgsEnv, err)
			os.Exit(2)
		}
		os.Args = append([]string{"courier"}, a...)
		addrOut := os.NewFile(3, "addr")
		os.Exit(runProcess(func(m *Main) {
			fmt.Fprintln(addrOut, m.Addr())
			addrOut.Close()
		}))
	}
	os.Exit(m.Run())
}

// child is courier running in a process of its own.
type child struct {
	t    *testing.T
	cmd  *exec.Cmd
	api  string // host:port of its local API, as it reported it
	done chan struct{}

	mu    sync.Mutex
	lines []string // its stderr
}

// startChild runs courier with args and, unless it is expected to fail,
// waits until its API listens.
func startChild(t *testing.T, wantAPI bool, args ...string) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(args)
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childArgsEnv+"="+string(a))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	addrR, addrW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.ExtraFiles = []*os.File{addrW} // the child's fd 3
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addrW.Close()
	c := &child{t: t, cmd: cmd, done: make(chan struct{})}
	apiAddr := make(chan string, 1)
	go func() {
		defer addrR.Close()
		line, err := bufio.NewReader(addrR).ReadString('\n')
		if err == nil {
			apiAddr <- strings.TrimSpace(line)
		}
	}()
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			c.mu.Lock()
			c.lines = append(c.lines, line)
			c.mu.Unlock()
		}
		_ = cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
		<-c.done
		if t.Failed() {
			t.Logf("courier (pid %d) stderr, last lines:\n%s", cmd.Process.Pid, c.tail(40))
		}
	})
	if !wantAPI {
		return c
	}
	select {
	case c.api = <-apiAddr:
	case <-c.done:
		t.Fatalf("courier exited at start: %s\n%s", cmd.ProcessState, c.tail(20))
	case <-time.After(st.WaitTimeout):
		t.Fatalf("courier did not start within %s\n%s", st.WaitTimeout, c.tail(20))
	}
	return c
}

func (c *child) tail(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines[max(0, len(c.lines)-n):], "\n")
}

func (c *child) stderr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n")
}

// signal sends sig and waits for the process to end; it returns the exit
// code (-1 when killed by a signal).
func (c *child) signal(sig syscall.Signal) int {
	c.t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		c.t.Fatal(err)
	}
	select {
	case <-c.done:
	case <-time.After(st.WaitTimeout):
		c.t.Fatalf("courier did not end within %s of %s", st.WaitTimeout, sig)
	}
	return c.cmd.ProcessState.ExitCode()
}

// api is a client for the child's local API.
func (c *child) client() *apiclient.Client {
	cl, err := apiclient.New(c.api, apiclient.Options{HTTPClient: httpClient})
	if err != nil {
		c.t.Fatal(err)
	}
	return cl
}

// post submits a message to the child's API: its status, or 0 when no
// answer came (the process died meanwhile, say).
func (c *child) post(to wire.PeerID, ct []byte) int {
	s, err := c.client().Submit(context.Background(), to.String(), ct)
	var e *apiclient.Error
	switch {
	case errors.As(err, &e):
		return e.Status
	case err != nil:
		return 0
	case s.Created:
		return http.StatusAccepted
	default:
		return http.StatusOK
	}
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

// message is GET /v1/messages/{id}.
type message = apiclient.Message

func (c *child) get(id string) message {
	c.t.Helper()
	m, err := c.client().Message(context.Background(), id)
	if err != nil {
		c.t.Fatalf("GET %s: %v", id, err)
	}
	return m
}

func (c *child) status() apiclient.Status {
	c.t.Helper()
	s, err := c.client().Status(context.Background())
	if err != nil {
		c.t.Fatal(err)
	}
	return s
}

func (c *child) waitRelay(state string) {
	c.t.Helper()
	st.Eventually(c.t, "courier's relay state "+state, func() bool { return c.status().Relay.State == state })
}

// childTOML is the child's config: A's node endpoints, a 30s grace so that
// messages wait, queued, while the relay is away.
func childTOML(relayURL string, n *st.Node, store string) string {
	return fmt.Sprintf(`relay_url = %q

[api]
listen = "127.0.0.1:0"

[node]
offline_publish_url = %q
inbound_url         = %q
sign_url            = %q

[store]
path = %q

[delivery]
relay_grace = "30s"
publish_timeout = "10s"
retry_wait_min = "20ms"
retry_wait_max = "200ms"
`, relayURL, n.OfflineURL(), n.InboundURL(), n.SignURL(), store)
}

// SIGKILL between accept and delivery loses nothing and delivers nothing
// twice: killed mid-stream, killed while messages await a PublishResult
// (sending), and killed while they wait for the relay (queued). SIGTERM
// then exits 0 with a clean WebSocket close at the relay.
func TestKill9(t *testing.T) {
	relayLog := st.NewRecordHandler()
	r := st.StartRelay(t, func(c *relay.Config) { c.Limits.DeliveryWait = 3 * time.Second }, slog.New(relayLog))
	a, b, c := st.NewNode(t, "A"), st.NewNode(t, "B"), st.NewNode(t, "C")
	sb := st.StartSidecar(t, b, st.Config(b, r.URL(), t.TempDir()), st.Options())
	sb.WaitRelay(sidecar.RelayConnected)

	dir := t.TempDir()
	config := filepath.Join(dir, "courier.toml")
	if err := os.WriteFile(config, []byte(childTOML(r.URL(), a, "courier.db")), 0o600); err != nil {
		t.Fatal(err)
	}
	courier := startChild(t, true, "-config", config)
	courier.waitRelay(sidecar.RelayConnected)

	type sent struct {
		to wire.PeerID
		ct []byte
	}
	all := make(map[string]sent) // every message the test tried to send, by ID
	accepted := make(map[string]bool)
	var mu sync.Mutex
	newMessage := func(to *st.Node, label string, i int) (string, []byte) {
		ct := st.Ciphertext(label, i, 300)
		id := wire.MessageID(ct)
		mu.Lock()
		all[id] = sent{to.Peer, ct}
		mu.Unlock()
		return id, ct
	}

	// 1. Mid-stream: four senders; the sidecar dies after 100 acceptances.
	const stream = 300
	var wg sync.WaitGroup
	var next, acceptedN int
	killed := make(chan struct{})
	var killOnce sync.Once
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= stream {
					return
				}
				id, ct := newMessage(b, "stream", i)
				code := courier.post(b.Peer, ct)
				mu.Lock()
				if code == http.StatusAccepted || code == http.StatusOK {
					accepted[id] = true
					acceptedN++
				}
				n := acceptedN
				mu.Unlock()
				if n >= 100 {
					killOnce.Do(func() { close(killed) })
				}
				if code == 0 { // no answer: the process is gone
					return
				}
			}
		}()
	}
	select {
	case <-killed:
	case <-time.After(st.WaitTimeout):
		t.Fatal("100 messages were not accepted in time")
	}
	if code := courier.signal(syscall.SIGKILL); code != -1 {
		t.Fatalf("after SIGKILL, exit code %d", code)
	}
	wg.Wait()
	t.Logf("mid-stream: %d accepted before SIGKILL, %d tried", len(accepted), len(all))

	// 2. Sending: the recipient C is connected but never acks; the relay
	// holds each publish for 3s. Killed while they await the result.
	courier = startChild(t, true, "-config", config)
	courier.waitRelay(sidecar.RelayConnected)
	noAck := st.DialNoAck(t, r, c)
	var sendingIDs []string
	for i := range 5 {
		id, ct := newMessage(c, "sending", i)
		if code := courier.post(c.Peer, ct); code != http.StatusAccepted {
			t.Fatalf("POST = %d", code)
		}
		accepted[id] = true
		sendingIDs = append(sendingIDs, id)
	}
	for _, id := range sendingIDs {
		st.Eventually(t, "message to C to be sending", func() bool { return courier.get(id).State == "sending" })
	}
	courier.signal(syscall.SIGKILL)

	// 3. Queued: the relay is down, within the grace. Killed while they wait.
	r.Stop()
	courier = startChild(t, true, "-config", config)
	var queuedIDs []string
	for i := range 20 {
		id, ct := newMessage(b, "queued", i)
		if code := courier.post(b.Peer, ct); code != http.StatusAccepted {
			t.Fatalf("POST = %d", code)
		}
		accepted[id] = true
		queuedIDs = append(queuedIDs, id)
	}
	for _, id := range append(queuedIDs, sendingIDs...) {
		// The C messages were left sending by the kill: resumed as queued.
		if m := courier.get(id); m.State != "queued" {
			t.Errorf("%.8s with the relay down: %s, want queued", id, m.State)
		}
	}
	courier.signal(syscall.SIGKILL)

	// Back up: the relay, then courier. Messages whose POST got no answer
	// are posted again: the node does not know whether they were taken.
	r.Restart()
	// The recipient first: were B still away, the relay would answer
	// queued, a NACK, and the messages would go OFFLINE (and reach B again
	// INDIRECT when it is back: by design, the node drops the copy by ID).
	sb.WaitRelay(sidecar.RelayConnected)
	courier = startChild(t, true, "-config", config)
	courier.waitRelay(sidecar.RelayConnected)
	for id, m := range all {
		if accepted[id] {
			continue
		}
		if code := courier.post(m.to, m.ct); code != http.StatusAccepted && code != http.StatusOK {
			t.Fatalf("POST again = %d", code)
		}
		accepted[id] = true
	}

	// Every accepted message reaches a final state.
	final := make(map[string]message)
	st.Eventually(t, fmt.Sprintf("all %d messages to reach a final state", len(accepted)), func() bool {
		for id := range accepted {
			if _, ok := final[id]; ok {
				continue
			}
			m := courier.get(id)
			switch m.State {
			case "delivered", "handed_off":
				final[id] = m
			case "failed":
				t.Fatalf("%.8s failed: %s", id, m.LastError)
			default:
				return false
			}
		}
		return true
	})
	// B's sidecar pushes to B's node after acking the relay: wait for it.
	st.Eventually(t, "B's node to get every message delivered INDIRECT", func() bool {
		got := b.Inbound.AcceptedIDs()
		for id, m := range final {
			if m.State == "delivered" && got[id] == 0 {
				return false
			}
		}
		return true
	})

	inbound, offline := b.Inbound.AcceptedIDs(), a.Offline.AcceptedIDs()
	paths := map[string]int{}
	for id, m := range final {
		paths[m.Path]++
		want := map[string]bool{"delivered": m.Path == "INDIRECT", "handed_off": m.Path == "OFFLINE"}[m.State]
		if !want {
			t.Errorf("%.8s: %s on path %q", id, m.State, m.Path)
		}
		// Nothing lost: the recipient's node has it, INDIRECT from B's
		// sidecar or from A's node OFFLINE.
		if inbound[id]+offline[id] == 0 {
			t.Errorf("%.8s (%s) reached neither B's inbound endpoint nor A's OFFLINE endpoint", id, m.State)
		}
		// Nothing twice, whatever the path.
		if inbound[id]+offline[id] > 1 {
			t.Errorf("%.8s reached the nodes %d times INDIRECT and %d times OFFLINE", id, inbound[id], offline[id])
		}
	}
	for _, id := range sendingIDs {
		if final[id].State != "handed_off" {
			t.Errorf("message to C %.8s: %s, want handed_off", id, final[id].State)
		}
	}
	for _, id := range queuedIDs {
		if final[id].State != "delivered" {
			t.Errorf("message queued at the kill %.8s: %s, want delivered", id, final[id].State)
		}
	}
	for id, n := range inbound {
		if _, ok := all[id]; !ok || n != 1 {
			t.Errorf("B's node got %.8s %d times (known: %v)", id, n, ok)
		}
	}
	rawInbound, rawOffline := len(b.Inbound.Requests()), len(a.Offline.Requests())
	t.Logf("%d messages: paths %v; raw POSTs: %d to B's inbound endpoint for %d IDs, %d to A's OFFLINE endpoint for %d IDs; C's relay client got %d deliveries of %d messages",
		len(final), paths, rawInbound, len(inbound), rawOffline, len(offline), len(noAck.Received()), len(sendingIDs))
	if rawInbound != len(inbound) || rawOffline != len(offline) {
		t.Errorf("raw duplicates at the node: %d inbound POSTs for %d IDs, %d OFFLINE POSTs for %d IDs", rawInbound, len(inbound), rawOffline, len(offline))
	}

	// `courier status` reads the running sidecar.
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"status", "-api", courier.api}, &out, &errb); err != nil {
		t.Fatalf("courier status: %v: %s", err, errb.String())
	}
	for _, want := range []string{"relay", "connected since", "peer ID", a.Peer.String(), "outbox", "delivered " + fmt.Sprint(paths["INDIRECT"]), "node offline", "node sign"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("courier status lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := run(context.Background(), []string{"status", "-api", courier.api, "-json"}, &out, &errb); err != nil || !json.Valid(out.Bytes()) {
		t.Errorf("courier status -json: %v: %s", err, out.String())
	}

	// 4. SIGTERM: exit 0, the relay connection closed with a close frame,
	// and a node long-polling the inbox answered at once, not left to hold
	// up the shutdown.
	before := len(relayLog.Lines("client closed", "code=1000"))
	polled := make(chan string, 1)
	wrote := make(chan struct{})
	go func() {
		trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { close(wrote) }}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
			http.MethodGet, "http://"+courier.api+"/v1/inbox?wait=60s", nil)
		// A connection of its own: an idle keep-alive one left by the
		// status calls would be closed by the shutdown under the request,
		// and the retry would find the listener gone.
		client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := client.Do(req)
		if err != nil {
			polled <- err.Error()
			return
		}
		defer resp.Body.Close()
		polled <- resp.Status + " " + st.ReadAll(resp.Body)
	}()
	<-wrote
	if code := courier.signal(syscall.SIGTERM); code != 0 {
		t.Errorf("after SIGTERM, exit code %d, want 0", code)
	}
	// The client wrote the request; whether the server had read it when the
	// signal came is a race. A poll being served is answered 503 at once
	// (localapi's TestInboxLongPollAndAck checks that in-process); one not
	// read yet is cut off by the shutdown. Either way nothing waits 60 s.
	switch got := <-polled; {
	case strings.HasPrefix(got, "503") && strings.Contains(got, "shutting down"):
	case strings.HasSuffix(got, "EOF") || strings.Contains(got, "connection reset"):
		t.Logf("the long poll was not read yet at SIGTERM: %s", got)
	default:
		t.Errorf("long poll at SIGTERM: %s", got)
	}
	if !strings.Contains(courier.stderr(), `"msg":"courier stopped"`) {
		t.Error("no \"courier stopped\" in the log")
	}
	st.Eventually(t, "the relay to log A's clean close", func() bool {
		return len(relayLog.Lines("client closed", "code=1000")) > before
	})
}

func TestStatusWithoutSidecar(t *testing.T) {
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"status", "-api", "127.0.0.1:1"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "is courier running?") {
		t.Errorf("status with nothing listening = %v", err)
	}
}

// A bad config stops courier at start: exit 1, the key named.
func TestConfigErrors(t *testing.T) {
	node := `
[node]
offline_publish_url = "http://127.0.0.1:4002/courier/offline"
sign_url = "http://127.0.0.1:4002/ob/signmessage"
`
	cases := []struct {
		name string
		toml string
		args []string
		want []string
	}{
		{"unknown key", node + "offline_url = \"x\"\n", nil, []string{"node.offline_url: unknown key"}},
		{"unknown table", node + "[relay]\nurl = \"ws://x/\"\n", nil, []string{"relay: unknown key"}},
		{"relay_url not ws", `relay_url = "http://127.0.0.1:8080/"` + "\n" + node, nil, []string{"relay_url:", "ws://"}},
		{"two relays", `relay_url = ["ws://a/", "ws://b/"]` + "\n" + node, nil, []string{"relay_url: exactly one relay URL"}},
		{"no OFFLINE endpoint", `relay_url = "ws://127.0.0.1:8080/"` + "\n[node]\nsign_url = \"http://127.0.0.1:1/s\"\n", nil, []string{"node.offline_publish_url: is required"}},
		{"no sign endpoint", "relay_url = \"ws://127.0.0.1:8080/\"\n[node]\noffline_publish_url = \"http://127.0.0.1:1/o\"\n", nil, []string{"node.sign_url: is required"}},
		{"bare number duration", node + "[delivery]\nrelay_grace = 10\n", nil, []string{"delivery.relay_grace:"}},
		{"bad duration", node + "[delivery]\nrelay_grace = \"soon\"\n", nil, []string{"relay_grace"}},
		{"not loopback, no token", node + "[api]\nlisten = \"0.0.0.0:4100\"\n", nil, []string{"api.token: required"}},
		{"bad -listen", node, []string{"-listen", "nowhere"}, []string{"api.listen:", "-listen"}},
		{"TOML syntax", "relay_url = \n", nil, []string{"parse config"}},
		{"several at once", "[node]\n[store]\nsynchronous = \"sometimes\"\n", nil, []string{"node.offline_publish_url", "store.synchronous"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "courier.toml")
			if err := os.WriteFile(path, []byte(tc.toml), 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), st.WaitTimeout)
			defer cancel()
			var errb bytes.Buffer
			err := run(ctx, append([]string{"-config", path}, tc.args...), io.Discard, &errb)
			if err == nil {
				t.Fatal("courier started with a bad config")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}

	// The program itself: exit status 1 and the message on stderr.
	t.Run("process", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "courier.toml")
		if err := os.WriteFile(path, []byte(node+"[delivery]\noffline_max_attempts = 0\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		c := startChild(t, false, "-config", path)
		select {
		case <-c.done:
		case <-time.After(st.WaitTimeout):
			t.Fatal("courier did not exit")
		}
		if code := c.cmd.ProcessState.ExitCode(); code != 1 {
			t.Errorf("exit code %d, want 1", code)
		}
		if out := c.stderr(); !strings.Contains(out, "courier: delivery.offline_max_attempts: is 0") {
			t.Errorf("stderr = %q", out)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		err := run(context.Background(), []string{"-config", filepath.Join(t.TempDir(), "nope.toml")}, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "nope.toml") {
			t.Errorf("missing file: %v", err)
		}
	})
}
