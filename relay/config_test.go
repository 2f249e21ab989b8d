package relay_test

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"courier/relay"
)

func TestDefaultConfigIsValid(t *testing.T) {
	if err := relay.DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseConfigProtocolExample(t *testing.T) {
	// The courier-relay example of PROTOCOL.md, verbatim.
	const example = `
listen = ":8080"
public_host = "relay.example.org"   # the host name clients sign for

[store]
driver = "sqlite"                   # or "redis"
path = "courier-relay.db"           # sqlite
# url = "redis://127.0.0.1:6379/0"  # redis

[limits]
max_message_bytes = 4194304         # decoded ciphertext bytes; larger: rejected, too_large
message_ttl = "336h"                # stored messages expire after this
delivery_wait = "3s"                # how long a level-2 publish waits for the recipient's ack
`
	cfg, err := relay.ParseConfig(strings.NewReader(example))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.PublicHost != "relay.example.org" || cfg.Limits.MessageTTL != 336*time.Hour || cfg.Limits.DeliveryWait != 3*time.Second {
		t.Errorf("parsed %+v", cfg)
	}
}

// The example file at the repository root documents every key with its
// default value.
func TestDefaultInflightBytesIsRelativeToTheMachine(t *testing.T) {
	got := relay.DefaultConfig().Limits.MaxInflightBytes
	if got < 64<<20 || got > 1<<30 {
		t.Errorf("default max_inflight_bytes %d, want between 64 MiB and 1 GiB", got)
	}
}

func TestExampleFileIsTheDefaults(t *testing.T) {
	f, err := os.Open("../courier-relay.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := relay.ParseConfig(f)
	if err != nil {
		t.Fatal(err)
	}
	want := relay.DefaultConfig()
	want.PublicHost = "relay.example.org"
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("example file:\n%+v\nwant the defaults:\n%+v", cfg, want)
	}
}

func TestParseConfigErrorsNameTheKey(t *testing.T) {
	tests := []struct{ name, toml, want string }{
		{"unknown top-level key", `lisen = ":1"`, `unknown key lisen`},
		{"unknown nested key", "[limits]\nmax_mesage_bytes = 1", `unknown key limits.max_mesage_bytes`},
		{"unknown table", "[nope]\nx = 1", `unknown key nope`},
		{"wrong type", "[limits]\nmax_message_bytes = \"big\"", `max_message_bytes`},
		{"bad duration", "[limits]\ndelivery_wait = \"soon\"", `delivery_wait`},
		{"syntax", "listen = ", `line 1`},
		{"duration as a number", "[keepalive]\nping_interval = 30", `keepalive.ping_interval: write a duration as a string`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := relay.ParseConfig(strings.NewReader(tt.toml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseConfig(%q) = %v, want an error containing %q", tt.toml, err, tt.want)
			}
		})
	}
}

func TestValidateNamesTheKey(t *testing.T) {
	tests := []struct {
		key    string
		mutate func(c *relay.Config)
	}{
		{"listen", func(c *relay.Config) { c.Listen = "" }},
		{"public_host", func(c *relay.Config) { c.PublicHost = "" }},
		{"public_host", func(c *relay.Config) { c.PublicHost = "a b" }},
		{"log_level", func(c *relay.Config) { c.LogLevel = "loud" }},
		{"sweep_interval", func(c *relay.Config) { c.SweepInterval = 0 }},
		{"shutdown_timeout", func(c *relay.Config) { c.ShutdownTimeout = -1 }},
		{"store.driver", func(c *relay.Config) { c.Store.Driver = "mysql" }},
		{"store.path", func(c *relay.Config) { c.Store.Path = "" }},
		{"store.synchronous", func(c *relay.Config) { c.Store.Synchronous = "off" }},
		{"store.max_batch", func(c *relay.Config) { c.Store.MaxBatch = -1 }},
		{"limits.max_message_bytes", func(c *relay.Config) { c.Limits.MaxMessageBytes = 0 }},
		{"limits.message_ttl", func(c *relay.Config) { c.Limits.MessageTTL = 0 }},
		{"limits.delivery_wait", func(c *relay.Config) { c.Limits.DeliveryWait = 0 }},
		{"limits.max_connections", func(c *relay.Config) { c.Limits.MaxConnections = -1 }},
		{"limits.publish_rate", func(c *relay.Config) { c.Limits.PublishRate = -1 }},
		{"limits.publish_burst", func(c *relay.Config) { c.Limits.PublishBurst = 0 }},
		{"limits.max_messages_per_key", func(c *relay.Config) { c.Limits.MaxMessagesPerKey = -1 }},
		{"limits.max_bytes_per_key", func(c *relay.Config) { c.Limits.MaxBytesPerKey = -1 }},
		{"limits.subscribe_timeout", func(c *relay.Config) { c.Limits.SubscribeTimeout = 0 }},
		{"limits.nonce_ttl", func(c *relay.Config) { c.Limits.NonceTTL = 0 }},
		{"limits.send_queue", func(c *relay.Config) { c.Limits.SendQueue = 0 }},
		{"limits.send_queue_bytes", func(c *relay.Config) { c.Limits.SendQueueBytes = 0 }},
		{"limits.max_inflight", func(c *relay.Config) { c.Limits.MaxInflight = 0 }},
		{"limits.write_timeout", func(c *relay.Config) { c.Limits.WriteTimeout = 0 }},
		{"limits.max_connections_per_ip", func(c *relay.Config) { c.Limits.MaxConnectionsPerIP = -1 }},
		{"trusted_proxies", func(c *relay.Config) { c.TrustedProxies = []string{"127.0.0.1/40"} }},
		{"limits.anonymous_publish_rate", func(c *relay.Config) { c.Limits.AnonymousPublishRate = -1 }},
		{"limits.anonymous_publish_burst", func(c *relay.Config) { c.Limits.AnonymousPublishBurst = 0 }},
		{"limits.subscribe_rate", func(c *relay.Config) { c.Limits.SubscribeRate = -1 }},
		{"limits.subscribe_burst", func(c *relay.Config) { c.Limits.SubscribeBurst = 0 }},
		{"limits.ack_rate", func(c *relay.Config) { c.Limits.AckRate = -1 }},
		{"limits.ack_burst", func(c *relay.Config) { c.Limits.AckBurst = 0 }},
		{"limits.anonymous_replay_messages", func(c *relay.Config) { c.Limits.AnonymousReplayMessages = -1 }},
		{"limits.anonymous_replay_bytes", func(c *relay.Config) { c.Limits.AnonymousReplayBytes = -1 }},
		{"limits.max_inflight_bytes_per_connection", func(c *relay.Config) { c.Limits.MaxInflightBytesPerConnection = 0 }},
		{"limits.max_inflight_bytes", func(c *relay.Config) { c.Limits.MaxInflightBytes = 0 }},
		{"keepalive.ping_interval", func(c *relay.Config) { c.Keepalive.PingInterval = 0 }},
		{"keepalive.ping_timeout", func(c *relay.Config) { c.Keepalive.PingTimeout = 0 }},
	}
	for _, tt := range tests {
		cfg := relay.DefaultConfig()
		tt.mutate(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), "config: "+tt.key+": ") {
			t.Errorf("%s: Validate = %v", tt.key, err)
		}
	}
	// Driver "redis": each problem names its key.
	for _, tt := range []struct {
		key    string
		mutate func(*relay.StoreConfig)
	}{
		{"store.url", func(s *relay.StoreConfig) {}},
		{"store.url", func(s *relay.StoreConfig) { s.URL = "http://127.0.0.1:6379" }},
		{"store.url", func(s *relay.StoreConfig) { s.URL = "redis://" }},
		{"store.url", func(s *relay.StoreConfig) { s.URL = "unix://" }},
		{"store.url", func(s *relay.StoreConfig) {
			s.URL, s.SentinelAddrs, s.MasterName = "redis://h:1", []string{"h:26379"}, "m"
		}},
		{"store.sentinel_addrs[1]", func(s *relay.StoreConfig) { s.SentinelAddrs, s.MasterName = []string{"h:26379", "nohost"}, "m" }},
		{"store.master_name", func(s *relay.StoreConfig) { s.SentinelAddrs = []string{"h:26379"} }},
		{"store.master_name", func(s *relay.StoreConfig) { s.URL, s.MasterName = "redis://h:1", "m" }},
		{"store.namespace", func(s *relay.StoreConfig) { s.URL, s.Namespace = "redis://h:1", "a:{b}" }},
	} {
		cfg := relay.DefaultConfig()
		cfg.Store.Driver = "redis"
		tt.mutate(&cfg.Store)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "config: "+tt.key+": ") {
			t.Errorf("redis %+v: Validate = %v, want an error naming %s", cfg.Store, err, tt.key)
		}
	}
	for _, st := range []relay.StoreConfig{
		{Driver: "redis", URL: "redis://127.0.0.1:6379/0"},
		{Driver: "redis", URL: "rediss://user@redis.example.org:6380"},
		{Driver: "redis", URL: "unix:///run/redis/redis.sock"},
		{Driver: "redis", SentinelAddrs: []string{"10.0.0.1:26379", "[::1]:26379"}, MasterName: "courier"},
	} {
		cfg := relay.DefaultConfig()
		cfg.Store = st
		if err := cfg.Validate(); err != nil {
			t.Errorf("redis %+v: %v", st, err)
		}
	}
	cfg := relay.DefaultConfig()
	// Every problem at once.
	cfg = relay.DefaultConfig()
	cfg.Listen, cfg.Limits.SendQueue = "", 0
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "listen") || !strings.Contains(err.Error(), "limits.send_queue") {
		t.Errorf("two problems: %v", err)
	}
}

// TestOfflineSection: [offline] turns the bridge on with its defaults for
// what it leaves out; without it the bridge is off.
func TestOfflineSection(t *testing.T) {
	cfg, err := relay.ParseConfig(strings.NewReader(`[limits]
delivery_wait = "2s"
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Offline != nil {
		t.Errorf("no [offline] section: Offline = %+v, want nil (bridge off)", cfg.Offline)
	}
	cfg, err = relay.ParseConfig(strings.NewReader(`[offline]
publish_url = "http://127.0.0.1:4002/courier/offline"
retry_max = "1m"
`))
	if err != nil {
		t.Fatal(err)
	}
	want := relay.DefaultOfflineConfig()
	want.PublishURL = "http://127.0.0.1:4002/courier/offline"
	want.RetryMax = time.Minute
	if cfg.Offline == nil || *cfg.Offline != want {
		t.Fatalf("Offline = %+v, want %+v", cfg.Offline, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ toml, want string }{
		{"[offline]\nafter = 3", "offline.after: write a duration as a string"},
		{"[offline]\npublish_url = \"x\"\nretries = 3", "unknown key offline.retries"},
	} {
		if _, err := relay.ParseConfig(strings.NewReader(tt.toml)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseConfig(%q) = %v, want %q", tt.toml, err, tt.want)
		}
	}
}

func TestValidateOfflineNamesTheKey(t *testing.T) {
	tests := []struct {
		key    string
		mutate func(o *relay.OfflineConfig)
	}{
		{"offline.publish_url", func(o *relay.OfflineConfig) { o.PublishURL = "" }},
		{"offline.publish_url", func(o *relay.OfflineConfig) { o.PublishURL = "ftp://node/offline" }},
		{"offline.publish_url", func(o *relay.OfflineConfig) { o.PublishURL = "http://user:secret@node/offline" }},
		{"offline.password_file", func(o *relay.OfflineConfig) { o.Username = "ob" }},
		{"offline.password_file", func(o *relay.OfflineConfig) { o.PasswordFile = "/p" }},
		{"offline.after", func(o *relay.OfflineConfig) { o.After = -time.Second }},
		{"offline.timeout", func(o *relay.OfflineConfig) { o.Timeout = 0 }},
		{"offline.retry_min", func(o *relay.OfflineConfig) { o.RetryMin = 0 }},
		{"offline.retry_max", func(o *relay.OfflineConfig) { o.RetryMax = o.RetryMin / 2 }},
		{"offline.retry_max", func(o *relay.OfflineConfig) { o.RetryMax = 25 * time.Hour }},
		{"offline.poll_interval", func(o *relay.OfflineConfig) { o.PollInterval = 0 }},
		{"offline.concurrency", func(o *relay.OfflineConfig) { o.Concurrency = 0 }},
		{"offline.unready_after", func(o *relay.OfflineConfig) { o.UnreadyAfter = 0 }},
	}
	for _, tt := range tests {
		cfg := relay.DefaultConfig()
		off := relay.DefaultOfflineConfig()
		off.PublishURL = "http://127.0.0.1:4002/courier/offline"
		tt.mutate(&off)
		cfg.Offline = &off
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), "config: "+tt.key+": ") {
			t.Errorf("%s: Validate = %v", tt.key, err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: the error quotes a password: %v", tt.key, err)
		}
	}
}

// TestExampleOfflineSection: the example's commented [offline] section,
// uncommented, is the bridge's defaults with its publish_url.
func TestExampleOfflineSection(t *testing.T) {
	b, err := os.ReadFile("../courier-relay.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n# [offline]\n")
	if !ok {
		t.Fatal("the example has no commented [offline] section")
	}
	var lines []string
	for _, l := range strings.Split(section, "\n") {
		lines = append(lines, strings.TrimPrefix(l, "# "))
	}
	cfg, err := relay.ParseConfig(strings.NewReader("[offline]\n" + strings.Join(lines, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	want := relay.DefaultOfflineConfig()
	want.PublishURL = "http://127.0.0.1:4002/courier/offline"
	if cfg.Offline == nil || *cfg.Offline != want {
		t.Errorf("example [offline] = %+v, want %+v", cfg.Offline, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Error(err)
	}
}
