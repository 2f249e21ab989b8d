package sidecar

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Config is the sidecar's configuration, read from TOML. Start from
// [DefaultConfig] (which [ParseConfig] does) and check with [Config.Validate].
// Config holds only comparable values, so two configs compare with ==.
type Config struct {
	// RelayURL is the one relay the sidecar connects to, a ws:// or wss://
	// URL. Empty (the key deleted) disables INDIRECT: everything goes OFFLINE.
	// Default: empty.
	RelayURL string `toml:"relay_url"`
	// RelayHost is the host name the relay's challenges may name (its
	// public_host) besides relay_url's own host, for a relay reached under
	// another name (an IP address, a tunnel, a proxy). The sidecar signs a
	// challenge only for relay_url's host or this one: otherwise a relay
	// could pass on another relay's challenge and log in there as this
	// node. Default: empty (relay_url's host only).
	RelayHost string `toml:"relay_host"`
	// RelayIdentity is who the sidecar is to the relay. "peer" (the
	// default; empty means the same): it authenticates as the node's peer
	// ID at protocol level 2, receives only messages addressed to that
	// peer, and gets a publish result, so a message the recipient took is
	// delivered INDIRECT without OFFLINE. "anonymous": it subscribes at
	// level 1 by its subscription key alone under a random userID kept in
	// the store, so the relay never learns the peer ID; it receives every
	// message under that key (other peers share it) and passes them to
	// the node, which drops what it cannot open (counted as not_for_node);
	// its publishes get no result, so each is also handed to the node's
	// OFFLINE endpoint. A change reconnects, like a relay_url change.
	RelayIdentity string `toml:"relay_identity"`
	// RelayCAFile is a PEM file of the certificate authorities a wss://
	// relay's certificate must chain to, instead of the system roots (a
	// relay with its own CA or a self-signed certificate). [LoadConfig]
	// resolves a relative path against the config file's directory.
	// Default: empty (the system roots).
	RelayCAFile string `toml:"relay_ca_file"`
	// AllowInsecure permits a ws:// (unencrypted, unauthenticated)
	// relay_url to a host that is not loopback: anyone on the path could
	// read who talks to whom and stand in for the relay. Default false.
	AllowInsecure bool `toml:"allow_insecure"`
	// RelayProxy is a SOCKS5 proxy every connection to the relay goes
	// through, such as Tor's "socks5://127.0.0.1:9050": the relay then
	// sees the proxy's (for Tor, an exit's) address instead of this
	// machine's. The relay's host name is resolved by the proxy, never
	// here, whether the scheme is socks5:// or socks5h:// (both mean the
	// same); a user and password in the URL authenticate to the proxy and
	// are never logged or shown. HTTP proxies from the environment are
	// then ignored. With it, a ws:// relay_url to a .onion host needs no
	// allow_insecure: Tor encrypts and authenticates onion connections end
	// to end. Default: empty (connect directly).
	RelayProxy string `toml:"relay_proxy"`

	API      APIConfig      `toml:"api"`
	Node     NodeConfig     `toml:"node"`
	Store    StoreConfig    `toml:"store"`
	Delivery DeliveryConfig `toml:"delivery"`
	Log      LogConfig      `toml:"log"`
}

// APIConfig is the local API the node talks to.
type APIConfig struct {
	// Listen is the TCP address of the local API. Default "127.0.0.1:4100".
	// Anything but a loopback address requires Token.
	Listen string `toml:"listen"`
	// Token, when set, is the bearer token every API request must carry
	// ("Authorization: Bearer <token>"), at least 16 characters. Required
	// when Listen is not a loopback address. Default: empty (no token).
	Token string `toml:"token"`
	// MaxMessageBytes is the largest ciphertext (decoded bytes) the
	// sidecar accepts from the node; larger is refused (413). A message
	// larger than the relay accepts but within this goes OFFLINE at once.
	// Default and ceiling [MaxMessageBytes] (16 MiB).
	MaxMessageBytes int `toml:"max_message_bytes"`
}

// NodeConfig names the node's endpoints the sidecar calls.
type NodeConfig struct {
	// OfflinePublishURL is the node's OFFLINE publish endpoint (POST
	// {"recipient","ciphertext"}, 2xx when the node has taken the message
	// onto its DHT path). Required.
	OfflinePublishURL string `toml:"offline_publish_url"`
	// InboundURL is the node's inbound endpoint, where the sidecar pushes
	// received messages. Optional: empty means the node polls /v1/inbox.
	InboundURL string `toml:"inbound_url"`
	// SignURL is the node's sign endpoint (openbazaar-go's
	// /ob/signmessage), used to authenticate to the relay. Required when
	// RelayURL is set.
	SignURL string `toml:"sign_url"`
	// Username and PasswordFile are the node API's HTTP basic auth
	// credentials (openbazaar-go's JSON-API Username, and a file holding
	// the plain password), sent with every call to the node. Set both or
	// neither. Default: empty (no basic auth).
	Username     string `toml:"username"`
	PasswordFile string `toml:"password_file"`
	// CookieFile is openbazaar-go's authentication cookie file (".cookie"
	// in its data directory, holding "OpenBazaar_Auth_Cookie=<value>"),
	// sent as that cookie with every call to the node. It is read again
	// every few seconds and after a 401 or 403, since the node writes a
	// new one at every start. Default: empty (no cookie).
	CookieFile string `toml:"cookie_file"`
}

// StoreConfig is the sidecar's SQLite queue.
type StoreConfig struct {
	// Path is the SQLite file. Default "courier.db". [LoadConfig] resolves
	// a relative path against the config file's directory.
	Path string `toml:"path"`
	// Synchronous is SQLite's synchronous mode: "full" (default; a message
	// acknowledged to the node survives a power loss) or "normal" (faster;
	// survives a crash of the sidecar but not of the machine).
	Synchronous string `toml:"synchronous"`
	// Retention is how long finished messages stay in the store: outbound
	// ones delivered, handed off or failed, inbound ones the node has or
	// refused. Older ones are deleted, ciphertext and all, every few
	// minutes, and the WAL is checkpointed and kept small. Messages still
	// on their way are never deleted. Default 72h.
	Retention time.Duration `toml:"retention"`
}

// DeliveryConfig tunes delivery, fallback and retries. Durations are TOML
// strings such as "10s" or "24h".
type DeliveryConfig struct {
	// RelayGrace is how long the relay may be unreachable before queued
	// messages go OFFLINE instead of waiting for it. Default 10s; 0 falls
	// back at once. For as long again after the relay comes back, a
	// "queued" answer (the recipient not connected: its sidecar may not
	// have reconnected yet) is retried INDIRECT before going OFFLINE.
	RelayGrace time.Duration `toml:"relay_grace"`
	// PublishTimeout is how long the sidecar waits for the relay's
	// PublishResult before treating the publish as a NACK and going
	// OFFLINE. Keep it above the relay's delivery_wait (3s). Default 10s.
	PublishTimeout time.Duration `toml:"publish_timeout"`
	// OfflineMaxAttempts is how many times the node's OFFLINE endpoint is
	// tried before the message is marked failed. Default 10.
	OfflineMaxAttempts int `toml:"offline_max_attempts"`
	// OfflineMaxAge is how long after it was queued a message may still be
	// retried OFFLINE; after that it is marked failed. Default 24h.
	OfflineMaxAge time.Duration `toml:"offline_max_age"`
	// RetryWaitMin and RetryWaitMax bound the exponential backoff (with
	// full jitter) between attempts, for OFFLINE hand-offs and for pushes
	// to the node's inbound endpoint. Inbound pushes never give up: the
	// relay has been acked, so the sidecar's inbox is the only copy.
	// Defaults 1s and 5m.
	RetryWaitMin time.Duration `toml:"retry_wait_min"`
	RetryWaitMax time.Duration `toml:"retry_wait_max"`
}

// LogConfig is the sidecar's logging.
type LogConfig struct {
	// Level is the minimum level logged: "debug", "info" (default), "warn"
	// or "error".
	Level string `toml:"level"`
}

// Values of relay_identity.
const (
	IdentityPeer      = "peer"      // level 2, authenticated as the node's peer ID (default)
	IdentityAnonymous = "anonymous" // level 1, by subscription key under a random userID
)

// Anonymous reports whether relay_identity is "anonymous".
func (c Config) Anonymous() bool { return c.RelayIdentity == IdentityAnonymous }

// SlogLevel returns Level as a [slog.Level]; [slog.LevelInfo] when Level
// is not valid (which [Config.Validate] reports).
func (l LogConfig) SlogLevel() slog.Level {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(l.Level)); err != nil {
		return slog.LevelInfo
	}
	return lvl
}

// Defaults of the keys that have one.
const (
	DefaultListen             = "127.0.0.1:4100"
	DefaultStorePath          = "courier.db"
	DefaultSynchronous        = "full"
	DefaultRelayGrace         = 10 * time.Second
	DefaultPublishTimeout     = 10 * time.Second
	DefaultOfflineMaxAttempts = 10
	DefaultOfflineMaxAge      = 24 * time.Hour
	DefaultRetryWaitMin       = time.Second
	DefaultRetryWaitMax       = 5 * time.Minute
	DefaultLogLevel           = "info"
	DefaultRetention          = 72 * time.Hour
)

// MaxMessageBytes is the default, and the ceiling, of api.max_message_bytes:
// the largest ciphertext the sidecar accepts from its node, 16 MiB, above
// the relay's default limit (4 MiB): what the relay does not take goes
// OFFLINE.
const MaxMessageBytes = 16 << 20

// minTokenLen is the shortest api.token accepted.
const minTokenLen = 16

// DefaultConfig returns the configuration with every default filled in. It
// does not validate: node.offline_publish_url has no default.
func DefaultConfig() Config {
	return Config{
		API:   APIConfig{Listen: DefaultListen, MaxMessageBytes: MaxMessageBytes},
		Store: StoreConfig{Path: DefaultStorePath, Synchronous: DefaultSynchronous, Retention: DefaultRetention},
		Delivery: DeliveryConfig{
			RelayGrace:         DefaultRelayGrace,
			PublishTimeout:     DefaultPublishTimeout,
			OfflineMaxAttempts: DefaultOfflineMaxAttempts,
			OfflineMaxAge:      DefaultOfflineMaxAge,
			RetryWaitMin:       DefaultRetryWaitMin,
			RetryWaitMax:       DefaultRetryWaitMax,
		},
		Log: LogConfig{Level: DefaultLogLevel},
	}
}

// durationKeys are the keys decoded into a time.Duration. The TOML decoder
// would read an integer as nanoseconds; we refuse that instead.
var durationKeys = [][]string{
	{"delivery", "relay_grace"},
	{"delivery", "publish_timeout"},
	{"delivery", "offline_max_age"},
	{"delivery", "retry_wait_min"},
	{"delivery", "retry_wait_max"},
	{"store", "retention"},
}

// ParseConfig decodes TOML from r over [DefaultConfig]. It is strict: an
// unknown key, a value of the wrong type, a list for relay_url or a number
// for a duration is an error naming the key. It does not call Validate.
func ParseConfig(r io.Reader) (Config, error) {
	cfg := DefaultConfig()
	md, err := toml.NewDecoder(r).Decode(&cfg)
	// Checked before err: decoding a list into a string fails with a
	// message about Go types that helps nobody.
	if md.Type("relay_url") == "Array" {
		return Config{}, errors.New("relay_url: exactly one relay URL is supported; a list is not: write relay_url = \"wss://…\"")
	}
	if err != nil {
		return Config{}, fmt.Errorf("parse config: %w", err)
	}
	var errs []error
	var unknown []string
	for _, k := range md.Undecoded() {
		// Report an unknown table once, not once per key inside it.
		name := k.String()
		if hasPrefixKey(unknown, name) {
			continue
		}
		unknown = append(unknown, name)
		errs = append(errs, fmt.Errorf("%s: unknown key: remove it or fix its spelling (config.example.toml lists every key)", name))
	}
	for _, k := range durationKeys {
		if t := md.Type(k...); t != "" && t != "String" {
			errs = append(errs, fmt.Errorf("%s: write a duration as a string with a unit, such as \"10s\" or \"5m\", not a bare %s", strings.Join(k, "."), strings.ToLower(t)))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// hasPrefixKey reports whether one of keys is a table that contains name.
func hasPrefixKey(keys []string, name string) bool {
	for _, k := range keys {
		if strings.HasPrefix(name, k+".") {
			return true
		}
	}
	return false
}

// LoadConfig reads and parses the config file at path (see [ParseConfig])
// and resolves a relative store.path, node.password_file and
// node.cookie_file against the file's directory. It does not call Validate.
func LoadConfig(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("load config: %w", err)
	}
	defer f.Close()
	cfg, err := ParseConfig(f)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	for _, p := range []*string{&cfg.Store.Path, &cfg.Node.PasswordFile, &cfg.Node.CookieFile, &cfg.RelayCAFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(filepath.Dir(path), *p)
		}
	}
	return cfg, nil
}

// Validate checks every key and returns all problems at once, each naming
// the key path ("node.offline_publish_url: …") and saying what to do.
func (c Config) Validate() error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf(key+": "+format, args...))
	}

	if c.RelayURL != "" {
		if err := checkURL(c.RelayURL, "ws", "wss"); err != nil {
			add("relay_url", "%w; delete the line to opt out of INDIRECT", err)
		} else if u, _ := url.Parse(c.RelayURL); u.Scheme == "ws" && !isLoopbackHost(u.Hostname()) && !c.AllowInsecure &&
			!(c.RelayProxy != "" && isOnionHost(u.Hostname())) {
			add("relay_url", "%q is ws:// (no TLS) to %q, which is not this machine: anyone on the path could read it and stand in for the relay. Use wss://, or set allow_insecure = true if you accept that", c.RelayURL, u.Hostname())
		}
	}
	if c.RelayCAFile != "" {
		if _, err := LoadRelayCA(c.RelayCAFile); err != nil {
			add("relay_ca_file", "%w", err)
		}
	}

	if c.RelayProxy != "" {
		if _, err := ParseRelayProxy(c.RelayProxy); err != nil {
			add("relay_proxy", "%w", err)
		}
	}

	if c.RelayHost != "" {
		// Without relay_url it is unused: deleting relay_url alone opts out.
		if strings.ContainsAny(c.RelayHost, "/ @?#") || strings.Contains(c.RelayHost, "://") {
			add("relay_host", "%q is not a host name: write the relay's public_host alone, e.g. %q", c.RelayHost, "relay.example.org")
		}
	}

	switch c.RelayIdentity {
	case "", IdentityPeer, IdentityAnonymous:
	default:
		add("relay_identity", "is %q: use %q (authenticate as the node's peer ID; the default) or %q (subscribe by subscription key only; the relay never learns the peer ID)", c.RelayIdentity, IdentityPeer, IdentityAnonymous)
	}

	if c.API.MaxMessageBytes < 1 || c.API.MaxMessageBytes > MaxMessageBytes {
		add("api.max_message_bytes", "is %d: use 1 to %d (16 MiB); larger than the relay takes goes OFFLINE", c.API.MaxMessageBytes, MaxMessageBytes)
	}

	if c.API.Listen == "" {
		add("api.listen", "is empty: set a host:port such as %q", DefaultListen)
	} else if loopback, err := checkListen(c.API.Listen); err != nil {
		add("api.listen", "%w", err)
	} else if !loopback && c.API.Token == "" {
		add("api.token", "required because api.listen %q is not a loopback address: set a random token of at least %d characters, or listen on 127.0.0.1", c.API.Listen, minTokenLen)
	}
	if c.API.Token != "" && len(c.API.Token) < minTokenLen {
		add("api.token", "is %d characters: use at least %d random characters (e.g. the output of `openssl rand -hex 32`)", len(c.API.Token), minTokenLen)
	}

	if c.Node.OfflinePublishURL == "" {
		add("node.offline_publish_url", "is required: set the node's OFFLINE publish endpoint, e.g. %q", "http://127.0.0.1:4002/courier/offline")
	} else if err := checkURL(c.Node.OfflinePublishURL, "http", "https"); err != nil {
		add("node.offline_publish_url", "%w", err)
	}
	if c.Node.InboundURL != "" {
		if err := checkURL(c.Node.InboundURL, "http", "https"); err != nil {
			add("node.inbound_url", "%w; or delete the line and let the node poll /v1/inbox", err)
		}
	}
	if c.Node.SignURL == "" {
		if c.RelayURL != "" {
			add("node.sign_url", "is required when relay_url is set: set the node's sign endpoint, e.g. %q", "http://127.0.0.1:4002/ob/signmessage")
		}
	} else if err := checkURL(c.Node.SignURL, "http", "https"); err != nil {
		add("node.sign_url", "%w", err)
	}

	if (c.Node.Username == "") != (c.Node.PasswordFile == "") {
		add("node.username", "and node.password_file go together (HTTP basic auth): set both, or delete both")
	}

	if c.Store.Path == "" {
		add("store.path", "is empty: set the SQLite file, e.g. %q", DefaultStorePath)
	}
	if c.Store.Synchronous != "full" && c.Store.Synchronous != "normal" {
		add("store.synchronous", "is %q: use \"full\" or \"normal\"", c.Store.Synchronous)
	}

	d := c.Delivery
	if d.RelayGrace < 0 {
		add("delivery.relay_grace", "is %s: use 0s or more", d.RelayGrace)
	}
	positive := []struct {
		key string
		val time.Duration
	}{
		{"delivery.publish_timeout", d.PublishTimeout},
		{"delivery.offline_max_age", d.OfflineMaxAge},
		{"delivery.retry_wait_min", d.RetryWaitMin},
		{"delivery.retry_wait_max", d.RetryWaitMax},
		{"store.retention", c.Store.Retention},
	}
	for _, p := range positive {
		if p.val <= 0 {
			add(p.key, "is %s: use a positive duration such as \"10s\"", p.val)
		}
	}
	if d.RetryWaitMin > 0 && d.RetryWaitMax > 0 && d.RetryWaitMax < d.RetryWaitMin {
		add("delivery.retry_wait_max", "(%s) is less than delivery.retry_wait_min (%s): raise it or lower retry_wait_min", d.RetryWaitMax, d.RetryWaitMin)
	}
	if d.OfflineMaxAttempts < 1 {
		add("delivery.offline_max_attempts", "is %d: use 1 or more", d.OfflineMaxAttempts)
	}

	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.Log.Level)); err != nil || c.Log.Level == "" {
		add("log.level", "is %q: use \"debug\", \"info\", \"warn\" or \"error\"", c.Log.Level)
	}
	return errors.Join(errs...)
}

// checkURL checks that s is an absolute URL with one of schemes and a host.
func checkURL(s string, schemes ...string) error {
	want := strings.Join(schemes, "://… or ") + "://…"
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL (%w): write %s", s, err, want)
	}
	ok := false
	for _, sc := range schemes {
		ok = ok || u.Scheme == sc
	}
	if !ok {
		return fmt.Errorf("%q has scheme %q: write %s", s, u.Scheme, want)
	}
	if u.Host == "" || u.Hostname() == "" {
		return fmt.Errorf("%q names no host: write %s", s, want)
	}
	return nil
}

// ParseRelayProxy parses relay_proxy: socks5:// or socks5h://, a host and
// a numeric port, optionally a user and password, nothing else. Its errors
// never quote the password.
func ParseRelayProxy(s string) (*url.URL, error) {
	const want = "write the SOCKS5 proxy as socks5h://host:port, such as \"socks5h://127.0.0.1:9050\" for Tor"
	u, err := url.Parse(s)
	if err != nil {
		// Not err itself: net/url quotes the whole URL, password and all.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("is not a URL (%w): %s", err, want)
	}
	shown := RedactProxy(u)
	if u.Scheme != "socks5" && u.Scheme != "socks5h" {
		if u.Scheme == "http" || u.Scheme == "https" {
			return nil, fmt.Errorf("%q is an HTTP proxy: only SOCKS5 is supported; %s", shown, want)
		}
		return nil, fmt.Errorf("%q has scheme %q: %s", shown, u.Scheme, want)
	}
	if u.Opaque != "" || u.Hostname() == "" {
		return nil, fmt.Errorf("%q names no host: %s", shown, want)
	}
	if n, err := strconv.Atoi(u.Port()); err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("%q needs a port from 1 to 65535 (Tor's is 9050): %s", shown, want)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%q has a path, query or fragment: a proxy is only host:port; %s", shown, want)
	}
	if u.User != nil {
		// What SOCKS5's user/password authentication (RFC 1929) can
		// carry; the client would refuse anything else at every connect.
		pw, _ := u.User.Password()
		switch name := u.User.Username(); {
		case name == "":
			return nil, fmt.Errorf("%q has a password but no user name: write socks5h://user:password@host:port", shown)
		case len(name) > 255 || len(pw) > 255:
			return nil, fmt.Errorf("%q: the user name (%d bytes) and the password (%d bytes) may be at most 255 bytes each (SOCKS5, RFC 1929)", shown, len(name), len(pw))
		}
	}
	return u, nil
}

// RedactProxy returns the proxy URL as it may be logged and shown: its
// scheme and host:port, without user or password.
func RedactProxy(u *url.URL) string {
	return u.Scheme + "://" + u.Host
}

// isOnionHost reports whether host is a Tor onion service name (RFC 7686).
func isOnionHost(host string) bool {
	return strings.HasSuffix(strings.ToLower(strings.TrimSuffix(host, ".")), ".onion")
}

// isLoopbackHost reports whether host is "localhost" or a loopback IP.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// LoadRelayCA reads relay_ca_file: PEM certificates, at least one.
func LoadRelayCA(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read the relay's CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\"): give the CA certificate the relay's certificate is signed by", path)
	}
	return pool, nil
}

// checkListen checks a host:port listen address and reports whether it is
// loopback only. An empty host (":4100") listens on every interface.
func checkListen(addr string) (loopback bool, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("%q is not host:port (%w): write e.g. %q", addr, err, DefaultListen)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return false, fmt.Errorf("%q has port %q: use a number from 0 to 65535", addr, port)
	}
	if host == "localhost" {
		return true, nil
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback(), nil
}
