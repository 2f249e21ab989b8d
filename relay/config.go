package relay

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Config is the relay's configuration: the courier-relay TOML file of
// PROTOCOL.md plus the keys documented on each field. Build one with
// DefaultConfig or ParseConfig, then check it with Validate (New does).
type Config struct {
	// Listen is the address courier-relay binds. Default ":8080".
	Listen string `toml:"listen"`
	// PublicHost is the host name level-2 clients sign for (the "host" of an
	// AuthChallenge). Default "localhost".
	PublicHost string `toml:"public_host"`
	// LogLevel is debug, info, warn or error. Default "info".
	LogLevel string `toml:"log_level"`
	// SweepInterval is how often messages older than Limits.MessageTTL are
	// deleted. Default 10m.
	SweepInterval time.Duration `toml:"sweep_interval"`
	// ShutdownTimeout bounds a graceful shutdown of courier-relay. Default 10s.
	ShutdownTimeout time.Duration `toml:"shutdown_timeout"`
	// DrainDelay is how long courier-relay, on SIGTERM, reports not ready
	// (/readyz 503) while still serving, so that a front such as HAProxy
	// stops sending it new connections, before it closes its connections
	// with 1012 and exits. Default 5s; 0 closes at once.
	DrainDelay time.Duration `toml:"drain_delay"`
	// TrustedProxies are the addresses (or CIDR prefixes) of fronts such as
	// HAProxy that connect on behalf of clients and name the client in
	// X-Forwarded-For. For a connection from one of them, the relay's
	// per-address limits (max_connections_per_ip, subscribe_rate,
	// anonymous_publish_rate) and client_details logs use the address
	// the nearest front names, not the front's own; from anyone else the
	// header is ignored, since a client could write anything there. List
	// only fronts: a client connecting from a listed address may name any
	// address. The RFC 7239 Forwarded header is not read.
	// Default none: behind a front, every client would share the front's
	// address and its limits.
	TrustedProxies []string `toml:"trusted_proxies"`

	// TLS, when both files are set, makes courier-relay serve https://
	// and wss:// itself.
	TLS TLSConfig `toml:"tls"`
	// Log is the [log] section (log_level stays at the top).
	Log LogConfig `toml:"log"`

	Store     StoreConfig     `toml:"store"`
	Limits    LimitsConfig    `toml:"limits"`
	Keepalive KeepaliveConfig `toml:"keepalive"`
	// Offline is the OFFLINE bridge: nil (the [offline] section absent)
	// turns it off.
	Offline *OfflineConfig `toml:"offline"`

	// Client, when set, is served at /client/ (the browser client). It is
	// not read from TOML.
	Client fs.FS `toml:"-"`
	// Version is reported by GET /; the binary sets it. Not read from TOML.
	Version string `toml:"-"`
}

// TLSConfig is the [tls] section. Set both files or neither.
type TLSConfig struct {
	// CertFile is the PEM certificate chain (leaf first), such as
	// Let's Encrypt's fullchain.pem. A renewed file is picked up by new
	// connections within a few seconds; open connections are kept.
	CertFile string `toml:"cert_file"`
	// KeyFile is the PEM private key of that certificate.
	KeyFile string `toml:"key_file"`
	// ReloadInterval is how often, at most, the files are checked for a
	// renewal. Default 5s. Not read from TOML (tests set it).
	ReloadInterval time.Duration `toml:"-"`
}

// Enabled reports whether TLS is configured.
func (t TLSConfig) Enabled() bool { return t.CertFile != "" && t.KeyFile != "" }

// StoreConfig selects and tunes the message store.
type StoreConfig struct {
	// Driver is "sqlite" (default: one instance) or "redis" (any number of
	// instances sharing one Redis 7 or Valkey).
	Driver string `toml:"driver"`
	// Path is the SQLite database file. Default "courier-relay.db".
	Path string `toml:"path"`
	// URL is the Redis server, for driver "redis": redis://[user@]host:port/db,
	// rediss:// for TLS, or unix:///path/to/redis.sock. Give either URL or
	// SentinelAddrs with MasterName.
	URL string `toml:"url"`
	// SentinelAddrs are the host:port addresses of the Redis Sentinels that
	// watch the primary named MasterName (Redis high availability).
	SentinelAddrs []string `toml:"sentinel_addrs"`
	// MasterName is the Sentinel name of the Redis primary.
	MasterName string `toml:"master_name"`
	// PasswordFile, if set, holds the Redis password (one line), kept out
	// of the configuration file. It overrides a password in URL.
	PasswordFile string `toml:"password_file"`
	// Namespace prefixes every Redis key of this relay. Default "courier".
	// Instances with the same Redis and namespace are one relay.
	Namespace string `toml:"namespace"`
	// Synchronous is SQLite's synchronous setting: "full" (default: every
	// group commit is fsynced) or "normal" (faster; a power cut may lose the
	// last commits, a process crash does not).
	Synchronous string `toml:"synchronous"`
	// MaxBatch caps the writes in one group commit. Default 0: the store's own default.
	MaxBatch int `toml:"max_batch"`
}

// LimitsConfig bounds what clients may do. Zero disables the limits marked so.
type LimitsConfig struct {
	// MaxMessageBytes is the largest ciphertext accepted, in decoded bytes.
	// Larger ones are rejected with too_large; frames larger than the base64
	// of such a message plus 16 KiB close the connection with 1009.
	// Default 4 MiB.
	MaxMessageBytes int `toml:"max_message_bytes"`
	// MessageTTL is how long messages stay stored. Default 336h (14 days).
	MessageTTL time.Duration `toml:"message_ttl"`
	// DeliveryWait is how long a level-2 publish waits for the recipient's
	// ack before answering queued. Default 3s.
	DeliveryWait time.Duration `toml:"delivery_wait"`
	// MaxConnections refuses WebSocket upgrades beyond this many open
	// connections with HTTP 503. Default 10000; 0 is unlimited.
	MaxConnections int `toml:"max_connections"`
	// MaxConnectionsPerIP refuses WebSocket upgrades from a client address
	// (an IPv4 address, or the /64 of an IPv6 one) that has this many open
	// already, with HTTP 503 as at the global limit. Behind a reverse
	// proxy every client has the proxy's address: raise it or set 0.
	// Default 64; 0 is unlimited.
	MaxConnectionsPerIP int `toml:"max_connections_per_ip"`
	// PublishRate is the sustained publishes per second of one
	// authenticated peer, over all its connections (token bucket), and the
	// ceiling of AnonymousPublishRate. Default 1000; 0 is unlimited.
	PublishRate float64 `toml:"publish_rate"`
	// PublishBurst is that bucket's size: what a sidecar catching up on a
	// queue may send at once. Default 20000.
	PublishBurst int `toml:"publish_burst"`
	// AnonymousPublishRate is the sustained publishes per second of one
	// client address over its connections that have not authenticated
	// (level 1). Default 100; 0 leaves only PublishRate.
	AnonymousPublishRate float64 `toml:"anonymous_publish_rate"`
	// AnonymousPublishBurst is that bucket's size. Default 1000.
	AnonymousPublishBurst int `toml:"anonymous_publish_burst"`
	// SubscribeRate is the sustained subscribes per second of one client
	// address (both levels); a subscribe beyond is answered
	// {"error": "rate_limited: …"} and closed with 1013. Default 2; 0 is
	// unlimited.
	SubscribeRate float64 `toml:"subscribe_rate"`
	// SubscribeBurst is that bucket's size. Default 100.
	SubscribeBurst int `toml:"subscribe_burst"`
	// AnonymousReplayMessages bounds what the replay after one anonymous
	// (level-1) subscribe sends; the rest comes with a later subscribe,
	// once the first ones are acked. Default 1000; 0 is unlimited.
	AnonymousReplayMessages int `toml:"anonymous_replay_messages"`
	// AnonymousReplayBytes bounds the ciphertext bytes of that replay (at
	// least one message is sent). Default 32 MiB; 0 is unlimited.
	AnonymousReplayBytes int64 `toml:"anonymous_replay_bytes"`
	// AckRate is the sustained acks per second one connection may send for
	// messages it was not sent on that connection (among its last 4 x
	// SendQueue deliveries, at least 4096); acks of
	// messages it was sent are not limited. An ack beyond is answered
	// rate_limited and not recorded. Default 100; 0 is unlimited.
	AckRate float64 `toml:"ack_rate"`
	// AckBurst is that bucket's size. Default 1000.
	AckBurst int `toml:"ack_burst"`
	// MaxMessagesPerKey bounds the unacked messages one subscription key may
	// hold; publishes beyond are rejected over_quota. Default 10000; 0 is unlimited.
	MaxMessagesPerKey int64 `toml:"max_messages_per_key"`
	// MaxBytesPerKey bounds the unacked ciphertext bytes of one key.
	// Default 256 MiB; 0 is unlimited.
	MaxBytesPerKey int64 `toml:"max_bytes_per_key"`
	// SubscribeTimeout closes connections that have not subscribed this
	// long after connecting. Default 30s.
	SubscribeTimeout time.Duration `toml:"subscribe_timeout"`
	// NonceTTL is how long an AuthChallenge nonce stays valid. Default 60s.
	NonceTTL time.Duration `toml:"nonce_ttl"`
	// SendQueue bounds the frames waiting to be written to one connection;
	// a live subscriber that falls this far behind is disconnected (its
	// messages stay stored). Default 1024.
	SendQueue int `toml:"send_queue"`
	// SendQueueBytes bounds the bytes of those frames. Default 32 MiB.
	SendQueueBytes int `toml:"send_queue_bytes"`
	// MaxInflight bounds one connection's publishes and acks that wait for
	// their commit; the connection's reader pauses beyond. Default 256.
	MaxInflight int `toml:"max_inflight"`
	// MaxInflightBytesPerConnection bounds the ciphertext bytes of one
	// connection's publishes that wait for their commit; the connection's
	// reader pauses beyond. Default 16 MiB.
	MaxInflightBytesPerConnection int64 `toml:"max_inflight_bytes_per_connection"`
	// MaxInflightBytes bounds the ciphertext bytes of all publishes, on
	// every connection, that wait for their commit; a reader that would go
	// beyond pauses (back-pressure) until commits free room. Default: a
	// sixteenth of the machine's memory, between 64 MiB and 1 GiB.
	MaxInflightBytes int64 `toml:"max_inflight_bytes"`
	// WriteTimeout is how long one frame write may take before the peer is
	// dropped. Default 10s.
	WriteTimeout time.Duration `toml:"write_timeout"`
}

// KeepaliveConfig sets the server's WebSocket pings.
type KeepaliveConfig struct {
	// PingInterval is the time between pings. Default 30s.
	PingInterval time.Duration `toml:"ping_interval"`
	// PingTimeout drops a peer whose pong has not come this long after a ping.
	// Default 20s.
	PingTimeout time.Duration `toml:"ping_timeout"`
}

// OfflineConfig is the [offline] section: the relay's OFFLINE bridge
// (PROTOCOL.md, "The relay's OFFLINE bridge"), which hands the messages of
// light clients to the operator's OpenBazaar node when their recipient
// does not take them in time. Its defaults are DefaultOfflineConfig's.
type OfflineConfig struct {
	// PublishURL is the operator's node's OFFLINE publish endpoint, the
	// sidecar's node.offline_publish_url contract: POST
	// {"recipient","ciphertext"}, 2xx when the node has taken it. Required.
	PublishURL string `toml:"publish_url"`
	// Username and PasswordFile are the node API's HTTP basic auth (a file
	// holding the plain password). Set both or neither. Default: none.
	Username     string `toml:"username"`
	PasswordFile string `toml:"password_file"`
	// CookieFile is openbazaar-go's auth cookie file, holding
	// "OpenBazaar_Auth_Cookie=<value>", sent as that cookie. It is read
	// again every few seconds and after a 401 or 403 (the node writes a
	// new one at every start). Default: none.
	CookieFile string `toml:"cookie_file"`
	// After is how long the recipient's authenticated connection has to
	// ack a message before it is handed off. Default 0: limits.delivery_wait.
	After time.Duration `toml:"after"`
	// Timeout bounds one attempt (the POST to the node). Default 10s.
	Timeout time.Duration `toml:"timeout"`
	// RetryMin and RetryMax bound the wait between attempts: capped
	// exponential backoff with full jitter, the n-th retry waiting a random
	// time up to min(RetryMax, RetryMin·2ⁿ⁻¹). Defaults 1s and 5m.
	// Attempts go on until one succeeds or the message expires
	// (limits.message_ttl).
	RetryMin time.Duration `toml:"retry_min"`
	RetryMax time.Duration `toml:"retry_max"`
	// PollInterval is the longest the bridge sleeps before it looks for
	// hand-offs due again: for those of other instances whose lease ran
	// out, and for retries. Default 5s.
	PollInterval time.Duration `toml:"poll_interval"`
	// Concurrency is how many hand-offs run at once. Default 8.
	Concurrency int `toml:"concurrency"`
	// UnreadyAfter: /readyz fails once this many attempts in a row have
	// failed, until one succeeds. Default 5.
	UnreadyAfter int `toml:"unready_after"`
}

// maxRetryMax bounds offline.retry_max.
const maxRetryMax = 24 * time.Hour

// DefaultOfflineConfig is what an [offline] section leaves out.
func DefaultOfflineConfig() OfflineConfig {
	return OfflineConfig{
		Timeout:      10 * time.Second,
		RetryMin:     time.Second,
		RetryMax:     5 * time.Minute,
		PollInterval: 5 * time.Second,
		Concurrency:  8,
		UnreadyAfter: 5,
	}
}

// DefaultConfig returns the configuration used for every key a file leaves out.
func DefaultConfig() Config {
	return Config{
		Listen:          ":8080",
		PublicHost:      "localhost",
		LogLevel:        "info",
		SweepInterval:   10 * time.Minute,
		ShutdownTimeout: 10 * time.Second,
		DrainDelay:      5 * time.Second,
		TrustedProxies:  []string{},
		Store: StoreConfig{
			Driver:      "sqlite",
			Path:        "courier-relay.db",
			Synchronous: "full",
		},
		Limits: LimitsConfig{
			MaxMessageBytes:               4 << 20,
			MessageTTL:                    336 * time.Hour,
			DeliveryWait:                  3 * time.Second,
			MaxConnections:                10000,
			MaxConnectionsPerIP:           64,
			PublishRate:                   1000,
			PublishBurst:                  20000,
			AnonymousPublishRate:          100,
			AnonymousPublishBurst:         1000,
			SubscribeRate:                 2,
			SubscribeBurst:                100,
			AnonymousReplayMessages:       1000,
			AnonymousReplayBytes:          32 << 20,
			AckRate:                       100,
			AckBurst:                      1000,
			MaxMessagesPerKey:             10000,
			MaxBytesPerKey:                256 << 20,
			SubscribeTimeout:              30 * time.Second,
			NonceTTL:                      60 * time.Second,
			SendQueue:                     1024,
			SendQueueBytes:                32 << 20,
			MaxInflight:                   256,
			MaxInflightBytesPerConnection: 16 << 20,
			MaxInflightBytes:              defaultInflightBytes(),
			WriteTimeout:                  10 * time.Second,
		},
		Keepalive: KeepaliveConfig{
			PingInterval: 30 * time.Second,
			PingTimeout:  20 * time.Second,
		},
	}
}

// ParseConfig reads a TOML configuration over DefaultConfig. Unknown keys
// are errors naming the key. It does not call Validate.
func ParseConfig(r io.Reader) (Config, error) {
	cfg := DefaultConfig()
	off := DefaultOfflineConfig()
	cfg.Offline = &off // decoded into when the file has [offline]
	md, err := toml.NewDecoder(r).Decode(&cfg)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			msg := pe.Message
			if pe.LastKey != "" {
				msg = pe.LastKey + ": " + msg
			}
			return Config{}, fmt.Errorf("config: line %d: %s", pe.Position.Line, msg)
		}
		return Config{}, fmt.Errorf("config: %w", err)
	}
	for _, k := range md.Keys() {
		if durationKeys[k.String()] && md.Type(k...) != "String" {
			return Config{}, fmt.Errorf("config: %s: write a duration as a string such as \"30s\"", k)
		}
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return Config{}, fmt.Errorf("config: unknown key %s", strings.Join(keys, ", "))
	}
	if !md.IsDefined("offline") {
		cfg.Offline = nil
	}
	return cfg, nil
}

// durationKeys are the keys ParseConfig wants as strings: TOML would take
// a bare integer as nanoseconds.
var durationKeys = map[string]bool{
	"sweep_interval": true, "shutdown_timeout": true, "drain_delay": true,
	"limits.message_ttl": true, "limits.delivery_wait": true, "limits.subscribe_timeout": true,
	"limits.nonce_ttl": true, "limits.write_timeout": true,
	"keepalive.ping_interval": true, "keepalive.ping_timeout": true,
	"offline.after": true, "offline.timeout": true, "offline.retry_min": true,
	"offline.retry_max": true, "offline.poll_interval": true,
}

// ErrNotSupported is wrapped by Validate for a store driver that exists in
// the configuration format but not yet in this build.
var ErrNotSupported = errors.New("not supported yet")

// Validate checks every key; each error names the key's path.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: %s: %s", key, fmt.Sprintf(format, args...)))
	}
	positiveDur := func(key string, d time.Duration) {
		if d <= 0 {
			bad(key, "must be a positive duration such as \"30s\", got %v", d)
		}
	}
	if strings.TrimSpace(c.Listen) == "" {
		bad("listen", "must be an address such as \":8080\"")
	}
	if c.PublicHost == "" || strings.ContainsAny(c.PublicHost, " \t\r\n/") {
		bad("public_host", "must be the host name clients sign for, such as \"relay.example.org\", got %q", c.PublicHost)
	}
	if _, err := ParseLogLevel(c.LogLevel); err != nil {
		bad("log_level", "%v", err)
	}
	if _, err := parsePrefixes(c.TrustedProxies); err != nil {
		bad("trusted_proxies", "%v", err)
	}
	positiveDur("sweep_interval", c.SweepInterval)
	positiveDur("shutdown_timeout", c.ShutdownTimeout)
	if c.DrainDelay < 0 || c.DrainDelay > 10*time.Minute {
		bad("drain_delay", "must be between \"0s\" and \"10m\", got %v", c.DrainDelay)
	}
	switch t := c.TLS; {
	case t.CertFile != "" && t.KeyFile == "":
		bad("tls.key_file", "must be set with tls.cert_file (the certificate's private key, PEM); set both or neither")
	case t.CertFile == "" && t.KeyFile != "":
		bad("tls.cert_file", "must be set with tls.key_file (the certificate chain, PEM); set both or neither")
	case t.Enabled():
		for _, f := range []struct{ key, path string }{{"tls.cert_file", t.CertFile}, {"tls.key_file", t.KeyFile}} {
			if _, err := os.Stat(f.path); err != nil {
				bad(f.key, "cannot be read: %v", err)
			}
		}
	}

	switch c.Store.Driver {
	case "sqlite":
		if c.Store.Path == "" {
			bad("store.path", "must name the SQLite database file")
		}
		switch strings.ToLower(c.Store.Synchronous) {
		case "full", "normal":
		default:
			bad("store.synchronous", "must be \"full\" or \"normal\", got %q", c.Store.Synchronous)
		}
		if c.Store.MaxBatch < 0 {
			bad("store.max_batch", "must not be negative")
		}
	case "redis":
		c.Store.validateRedis(bad)
	default:
		bad("store.driver", "must be \"sqlite\" or \"redis\", got %q", c.Store.Driver)
	}

	l := c.Limits
	if l.MaxMessageBytes <= 0 || l.MaxMessageBytes > 64<<20 {
		bad("limits.max_message_bytes", "must be between 1 and %d, got %d", 64<<20, l.MaxMessageBytes)
	}
	positiveDur("limits.message_ttl", l.MessageTTL)
	positiveDur("limits.delivery_wait", l.DeliveryWait)
	positiveDur("limits.subscribe_timeout", l.SubscribeTimeout)
	positiveDur("limits.nonce_ttl", l.NonceTTL)
	positiveDur("limits.write_timeout", l.WriteTimeout)
	if l.MaxConnections < 0 {
		bad("limits.max_connections", "must not be negative (0 is unlimited)")
	}
	if l.PublishRate < 0 {
		bad("limits.publish_rate", "must not be negative (0 is unlimited)")
	}
	if l.PublishRate > 0 && l.PublishBurst < 1 {
		bad("limits.publish_burst", "must be at least 1 when limits.publish_rate is set")
	}
	if l.MaxConnectionsPerIP < 0 {
		bad("limits.max_connections_per_ip", "must not be negative (0 is unlimited)")
	}
	rateKeys := []struct {
		rate, burst string
		r           float64
		b           int
	}{
		{"limits.anonymous_publish_rate", "limits.anonymous_publish_burst", l.AnonymousPublishRate, l.AnonymousPublishBurst},
		{"limits.subscribe_rate", "limits.subscribe_burst", l.SubscribeRate, l.SubscribeBurst},
		{"limits.ack_rate", "limits.ack_burst", l.AckRate, l.AckBurst},
	}
	for _, k := range rateKeys {
		if k.r < 0 {
			bad(k.rate, "must not be negative (0 is unlimited)")
		}
		if k.r > 0 && k.b < 1 {
			bad(k.burst, "must be at least 1 when %s is set", k.rate)
		}
	}
	if l.AnonymousReplayMessages < 0 {
		bad("limits.anonymous_replay_messages", "must not be negative (0 is unlimited)")
	}
	if l.AnonymousReplayBytes < 0 {
		bad("limits.anonymous_replay_bytes", "must not be negative (0 is unlimited)")
	}
	if l.MaxInflightBytesPerConnection < 1 {
		bad("limits.max_inflight_bytes_per_connection", "must be at least 1 (a message larger than the budget waits for all of it)")
	}
	if l.MaxInflightBytes < 1 {
		bad("limits.max_inflight_bytes", "must be at least 1 (a message larger than the budget waits for all of it)")
	}
	if l.MaxMessagesPerKey < 0 {
		bad("limits.max_messages_per_key", "must not be negative (0 is unlimited)")
	}
	if l.MaxBytesPerKey < 0 {
		bad("limits.max_bytes_per_key", "must not be negative (0 is unlimited)")
	}
	if l.SendQueue < 1 {
		bad("limits.send_queue", "must be at least 1")
	}
	if l.SendQueueBytes < 1 {
		bad("limits.send_queue_bytes", "must be at least 1")
	}
	if l.MaxInflight < 1 {
		bad("limits.max_inflight", "must be at least 1")
	}
	positiveDur("keepalive.ping_interval", c.Keepalive.PingInterval)
	positiveDur("keepalive.ping_timeout", c.Keepalive.PingTimeout)
	if o := c.Offline; o != nil {
		o.validate(bad, positiveDur)
	}
	return errors.Join(errs...)
}

func (o *OfflineConfig) validate(bad func(key, format string, args ...any), positiveDur func(string, time.Duration)) {
	if o.PublishURL == "" {
		bad("offline.publish_url", "must be the operator's node's OFFLINE endpoint, such as \"http://127.0.0.1:4002/courier/offline\" (delete the [offline] section to turn the bridge off)")
	} else if u, err := url.Parse(o.PublishURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("offline.publish_url", "must be an http:// or https:// URL with a host, such as \"http://127.0.0.1:4002/courier/offline\"")
	} else if u.User != nil {
		bad("offline.publish_url", "must not hold credentials; use offline.username with offline.password_file, or offline.cookie_file")
	}
	if (o.Username == "") != (o.PasswordFile == "") {
		bad("offline.password_file", "offline.username and offline.password_file go together: set both or neither")
	}
	if o.After < 0 {
		bad("offline.after", "must not be negative (0 is limits.delivery_wait), got %v", o.After)
	}
	positiveDur("offline.timeout", o.Timeout)
	positiveDur("offline.retry_min", o.RetryMin)
	positiveDur("offline.retry_max", o.RetryMax)
	positiveDur("offline.poll_interval", o.PollInterval)
	if o.RetryMax < o.RetryMin {
		bad("offline.retry_max", "must be at least offline.retry_min (%v), got %v", o.RetryMin, o.RetryMax)
	}
	if o.RetryMax > maxRetryMax {
		bad("offline.retry_max", "must be at most %v, got %v", maxRetryMax, o.RetryMax)
	}
	if o.Concurrency < 1 || o.Concurrency > 1024 {
		bad("offline.concurrency", "must be between 1 and 1024, got %d", o.Concurrency)
	}
	if o.UnreadyAfter < 1 {
		bad("offline.unready_after", "must be at least 1, got %d", o.UnreadyAfter)
	}
}

// after is how long a message waits for its recipient's ack before it is
// handed off.
func (c Config) offlineAfter() time.Duration {
	if c.Offline != nil && c.Offline.After > 0 {
		return c.Offline.After
	}
	return c.Limits.DeliveryWait
}

func (st StoreConfig) validateRedis(bad func(key, format string, args ...any)) {
	switch {
	case st.URL == "" && len(st.SentinelAddrs) == 0:
		bad("store.url", "driver \"redis\" needs store.url (such as \"redis://127.0.0.1:6379/0\") or store.sentinel_addrs with store.master_name")
	case st.URL != "" && len(st.SentinelAddrs) > 0:
		bad("store.url", "give either store.url or store.sentinel_addrs, not both")
	case st.URL != "":
		u, err := url.Parse(st.URL)
		switch {
		case err != nil:
			// Not err itself: net/url quotes the whole URL, password and all.
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			bad("store.url", "not a URL: %v", err)
		case u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix":
			bad("store.url", "scheme must be redis://, rediss:// (TLS) or unix://, got %q", u.Scheme+"://")
		case u.Scheme == "unix" && u.Path == "":
			bad("store.url", "unix:// needs the socket's path, such as unix:///run/redis/redis.sock")
		case u.Scheme != "unix" && u.Host == "":
			bad("store.url", "needs a host, such as redis://127.0.0.1:6379/0")
		}
	default:
		for i, a := range st.SentinelAddrs {
			if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
				bad(fmt.Sprintf("store.sentinel_addrs[%d]", i), "must be host:port, such as \"10.0.0.1:26379\", got %q", a)
			}
		}
		if st.MasterName == "" {
			bad("store.master_name", "must name the primary the Sentinels watch (their \"sentinel monitor <name> …\")")
		}
	}
	if st.MasterName != "" && len(st.SentinelAddrs) == 0 {
		bad("store.master_name", "is used only with store.sentinel_addrs")
	}
	if st.Namespace != "" && strings.ContainsAny(st.Namespace, "{}: \t\r\n") {
		bad("store.namespace", "must not contain braces, colons or spaces, got %q", st.Namespace)
	}
}

// Quota is the per-key quota the limits ask the store to enforce.
func (l LimitsConfig) Quota() Quota {
	return Quota{MaxMessages: l.MaxMessagesPerKey, MaxBytes: l.MaxBytesPerKey}
}

// ParseLogLevel parses a log_level value.
func ParseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("must be debug, info, warn or error, got %q", s)
	}
	return l, nil
}
