package relay

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
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

	Store     StoreConfig     `toml:"store"`
	Limits    LimitsConfig    `toml:"limits"`
	Keepalive KeepaliveConfig `toml:"keepalive"`

	// Client, when set, is served at /client/ (the browser client). It is
	// not read from TOML.
	Client fs.FS `toml:"-"`
	// Version is reported by GET /; the binary sets it. Not read from TOML.
	Version string `toml:"-"`
}

// StoreConfig selects and tunes the message store.
type StoreConfig struct {
	// Driver is "sqlite" (default) or "redis" (not supported yet).
	Driver string `toml:"driver"`
	// Path is the SQLite database file. Default "courier-relay.db".
	Path string `toml:"path"`
	// URL is the Redis URL, for driver "redis".
	URL string `toml:"url"`
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

// DefaultConfig returns the configuration used for every key a file leaves out.
func DefaultConfig() Config {
	return Config{
		Listen:          ":8080",
		PublicHost:      "localhost",
		LogLevel:        "info",
		SweepInterval:   10 * time.Minute,
		ShutdownTimeout: 10 * time.Second,
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
	return cfg, nil
}

// durationKeys are the keys ParseConfig wants as strings: TOML would take
// a bare integer as nanoseconds.
var durationKeys = map[string]bool{
	"sweep_interval": true, "shutdown_timeout": true,
	"limits.message_ttl": true, "limits.delivery_wait": true, "limits.subscribe_timeout": true,
	"limits.nonce_ttl": true, "limits.write_timeout": true,
	"keepalive.ping_interval": true, "keepalive.ping_timeout": true,
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
	positiveDur("sweep_interval", c.SweepInterval)
	positiveDur("shutdown_timeout", c.ShutdownTimeout)

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
		errs = append(errs, fmt.Errorf("config: store.driver: %q is %w; use \"sqlite\"", c.Store.Driver, ErrNotSupported))
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
	return errors.Join(errs...)
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
