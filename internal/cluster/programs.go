package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"courier/localapi/apiclient"
)

// Relay is a running courier-relay.
type Relay struct {
	*Proc
	Config string // its TOML file
}

// URL is the relay's WebSocket URL.
func (r *Relay) URL() string { return "ws://" + r.Addr() + "/" }

// HTTPURL is the relay's plain HTTP base URL (/healthz, /client/, …).
func (r *Relay) HTTPURL() string { return "http://" + r.Addr() }

var relayAddrRE = regexp.MustCompile(`courier-relay listening.* addr=(\S+)`)

// StartRelay starts courier-relay on an SQLite file in the cluster's
// directory, with drain_delay 0 (it closes its clients with 1012 at once
// on SIGTERM). extraTOML is appended to its config (for [limits] and such).
func (c *Cluster) StartRelay(ctx context.Context, name, extraTOML string) (*Relay, error) {
	cfg := filepath.Join(c.Dir, name+".toml")
	// No front health-checks a cluster's relay, so a SIGTERM need not
	// drain first (the default drain_delay, 5 s, only slowed every stop).
	toml := fmt.Sprintf("listen = \"127.0.0.1:0\"\npublic_host = \"127.0.0.1\"\ndrain_delay = \"0s\"\n\n[store]\npath = %q\n\n%s\n",
		filepath.Join(c.Dir, name+".db"), extraTOML)
	if err := os.WriteFile(cfg, []byte(toml), 0o644); err != nil {
		return nil, err
	}
	p, err := c.start(ctx, name, c.Bins.Relay, []string{"-config", cfg}, relayAddrRE)
	if err != nil {
		return nil, err
	}
	p.args = append(p.args, "-listen", p.Addr()) // a restart comes back on the same port
	return &Relay{Proc: p, Config: cfg}, nil
}

// StartRelayConfig starts courier-relay on the whole TOML configuration
// given (a Redis store, say); its listen key is overridden with a free
// loopback port, which a restart keeps.
func (c *Cluster) StartRelayConfig(ctx context.Context, name, toml string) (*Relay, error) {
	cfg := filepath.Join(c.Dir, name+".toml")
	if err := os.WriteFile(cfg, []byte(toml), 0o644); err != nil {
		return nil, err
	}
	p, err := c.start(ctx, name, c.Bins.Relay, []string{"-config", cfg, "-listen", "127.0.0.1:0"}, relayAddrRE)
	if err != nil {
		return nil, err
	}
	p.args[len(p.args)-1] = p.Addr() // a restart comes back on the same port
	return &Relay{Proc: p, Config: cfg}, nil
}

// DevNode is a running devnode: a stand-in OpenBazaar node.
type DevNode struct {
	*Proc
	PeerID string
	PubKey string // hex marshalled public key
}

var devnodeRE = regexp.MustCompile(`peer_id=(\S+) pubkey=(\S+) listen=(\S+)`)
var devnodeAddrRE = regexp.MustCompile(`peer_id=\S+ pubkey=\S+ listen=(\S+)`)

// StartDevNode starts a devnode with a new identity in the cluster's
// directory.
func (c *Cluster) StartDevNode(ctx context.Context, name string) (*DevNode, error) {
	return c.StartDevNodeWith(ctx, name, DevNodeOptions{})
}

// DevNodeOptions tune StartDevNodeWith.
type DevNodeOptions struct {
	// Offline puts the devnode on the cluster's simulated OFFLINE network
	// (OfflineDir): its OFFLINE endpoint publishes there, and it polls
	// there for its own messages every OfflinePoll (default 1m).
	Offline     bool
	OfflinePoll time.Duration
}

// OfflineDir is the directory of the cluster's simulated OFFLINE network
// (devnode.OfflineStore), shared by the devnodes started with Offline.
func (c *Cluster) OfflineDir() string { return filepath.Join(c.Dir, "offline-network") }

// StartDevNodeWith starts a devnode with a new identity in the cluster's
// directory, with options.
func (c *Cluster) StartDevNodeWith(ctx context.Context, name string, o DevNodeOptions) (*DevNode, error) {
	args := []string{"serve", "-listen", "127.0.0.1:0", "-identity", filepath.Join(c.Dir, name+".key")}
	if o.Offline {
		args = append(args, "-offline-dir", c.OfflineDir())
		if o.OfflinePoll > 0 {
			args = append(args, "-offline-poll", o.OfflinePoll.String())
		}
	}
	p, err := c.start(ctx, name, c.Bins.DevNode, args, devnodeAddrRE)
	if err != nil {
		return nil, err
	}
	m := devnodeRE.FindStringSubmatch(p.line)
	p.args[2] = p.Addr()
	return &DevNode{Proc: p, PeerID: m[1], PubKey: m[2]}, nil
}

// URL is the devnode's HTTP base URL.
func (n *DevNode) URL() string { return "http://" + n.Addr() }

// Sent is what devnode's send answers.
type Sent struct {
	ID    string `json:"id"`
	State string `json:"state"`
}

// Send asks the node to seal text for to and post it to its sidecar, as a
// node does.
func (n *DevNode) Send(ctx context.Context, to *DevNode, text string) (Sent, error) {
	return n.SendTo(ctx, to.PeerID, to.PubKey, text)
}

// SendTo is Send to any peer, given its ID and hex public key.
func (n *DevNode) SendTo(ctx context.Context, toPeer, toPubKey, text string) (Sent, error) {
	var out Sent
	err := postJSON(ctx, n.URL()+"/devnode/send", map[string]string{
		"to_peer": toPeer, "to_pubkey": toPubKey, "text": text,
	}, &out)
	return out, err
}

// Received is one message the devnode's inbound endpoint took.
type Received struct {
	ID         string    `json:"id"`
	Sender     string    `json:"sender"`
	Text       string    `json:"text"`
	Path       string    `json:"path"`
	Count      int       `json:"count"` // how many times the sidecar posted it
	ReceivedAt time.Time `json:"received_at"`
	FirstSeen  time.Time `json:"first_seen"` // the node's clock: first and last POST
	LastSeen   time.Time `json:"last_seen"`
	// OfflineCount is how many copies the node's OFFLINE polls found;
	// PublishedAt is when the first of them was published OFFLINE.
	OfflineCount int       `json:"offline_count"`
	PublishedAt  time.Time `json:"published_at"`
}

// Received lists what reached the node, in arrival order.
func (n *DevNode) Received(ctx context.Context) ([]Received, error) {
	var out struct {
		Messages []Received `json:"messages"`
	}
	err := getJSON(ctx, n.URL()+"/devnode/received", &out)
	return out.Messages, err
}

// Offline lists what the node's OFFLINE endpoint was handed.
func (n *DevNode) Offline(ctx context.Context) ([]map[string]any, error) {
	var out struct {
		Messages []map[string]any `json:"messages"`
	}
	err := getJSON(ctx, n.URL()+"/devnode/offline", &out)
	return out.Messages, err
}

// Sidecar is a running courier sidecar.
type Sidecar struct {
	*Proc
	Config string // its TOML file, which the sidecar watches
	toml   SidecarConfig
}

// SidecarConfig is what StartSidecar writes into the sidecar's TOML.
type SidecarConfig struct {
	RelayURL string
	// RelayHost, if set, is the sidecar's relay_host: the relay's
	// public_host when it differs from relay_url's host (behind a front).
	RelayHost string
	// Node is the devnode the sidecar serves; it is pointed at the sidecar
	// once it runs. Or leave it nil and set NodeURL: the base URL of any
	// server with the node's endpoints (/ob/signmessage, /courier/offline,
	// /courier/inbound), such as a benchmark's in-process stand-in.
	Node    *DevNode
	NodeURL string
	// Extra is appended verbatim ([delivery] settings and such).
	Extra string
	// Top is written verbatim before the first table: top-level keys
	// such as relay_ca_file or relay_proxy.
	Top string
}

func (sc SidecarConfig) nodeURL() string {
	if sc.Node != nil {
		return sc.Node.URL()
	}
	return sc.NodeURL
}

var sidecarAddrRE = regexp.MustCompile(`"msg":"courier started".*"api":"([^"]+)"`)

// StartSidecar starts a courier sidecar for node.
func (c *Cluster) StartSidecar(ctx context.Context, name string, sc SidecarConfig) (*Sidecar, error) {
	s := &Sidecar{Config: filepath.Join(c.Dir, name+".toml"), toml: sc}
	if err := s.writeConfig(name, sc.RelayURL); err != nil {
		return nil, err
	}
	p, err := c.start(ctx, name, c.Bins.Sidecar, []string{"-config", s.Config}, sidecarAddrRE)
	if err != nil {
		return nil, err
	}
	p.args = append(p.args, "-listen", p.Addr())
	s.Proc = p
	if sc.Node != nil {
		if err := postJSON(ctx, sc.Node.URL()+"/devnode/sidecar", map[string]string{"url": s.URL()}, nil); err != nil {
			return nil, fmt.Errorf("point %s at its sidecar: %w", sc.Node.Name, err)
		}
	}
	return s, nil
}

func (s *Sidecar) writeConfig(name, relayURL string) error {
	var b strings.Builder
	if relayURL != "" {
		fmt.Fprintf(&b, "relay_url = %q\n", relayURL)
	}
	if s.toml.RelayHost != "" {
		fmt.Fprintf(&b, "relay_host = %q\n", s.toml.RelayHost)
	}
	b.WriteString(s.toml.Top + "\n")
	n := s.toml.nodeURL()
	fmt.Fprintf(&b, "\n[api]\nlisten = \"127.0.0.1:0\"\n\n[node]\noffline_publish_url = %q\ninbound_url = %q\nsign_url = %q\n\n[store]\npath = %q\n\n%s\n",
		n+"/courier/offline", n+"/courier/inbound", n+"/ob/signmessage",
		filepath.Join(filepath.Dir(s.Config), name+".db"), s.toml.Extra)
	// Replace the file as an editor does: write aside, rename over.
	tmp := s.Config + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, s.Config)
}

// SetRelayURL edits the sidecar's TOML: an empty url deletes the
// relay_url line (opting out of INDIRECT), another puts it back.
func (s *Sidecar) SetRelayURL(url string) error {
	return s.writeConfig(s.Name, url)
}

// URL is the sidecar's local API base URL.
func (s *Sidecar) URL() string { return "http://" + s.Addr() }

// API is a client for the sidecar's local API, at its current address.
func (s *Sidecar) API() *apiclient.Client {
	c, err := apiclient.New(s.URL(), apiclient.Options{HTTPClient: httpClient})
	if err != nil {
		panic(err) // s.URL() is http://host:port by construction
	}
	return c
}

// Message is a message's state as GET /v1/messages/{id} reports it.
type Message = apiclient.Message

// Message asks the sidecar for a message's state.
func (s *Sidecar) Message(ctx context.Context, id string) (Message, error) {
	return s.API().Message(ctx, id)
}

// RelayState returns the sidecar's relay connection state.
func (s *Sidecar) RelayState(ctx context.Context) (string, error) {
	st, err := s.API().Status(ctx)
	return st.Relay.State, err
}

// WaitFor polls cond every 20 ms until it returns true or ctx ends; the
// error is cond's last error or ctx's.
func WaitFor(ctx context.Context, what string, cond func(context.Context) (bool, error)) error {
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("waiting for %s: %w (last error: %v)", what, ctx.Err(), last)
			}
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

func getJSON(ctx context.Context, url string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	return do(req, out)
}

func postJSON(ctx context.Context, url string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return do(req, out)
}

func do(req *http.Request, out any) error {
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", req.Method, req.URL, resp.Status, bytes.TrimSpace(b))
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: decode: %w", req.Method, req.URL, err)
	}
	return nil
}
