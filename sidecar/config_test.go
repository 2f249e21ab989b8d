package sidecar

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

// minimalTOML is the smallest valid config.
const minimalTOML = `
[node]
offline_publish_url = "http://127.0.0.1:4002/courier/offline"
`

func mustParse(t *testing.T, s string) Config {
	t.Helper()
	cfg, err := ParseConfig(strings.NewReader(s))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	return cfg
}

func TestDefaultConfig(t *testing.T) {
	cfg := mustParse(t, minimalTOML)
	want := DefaultConfig()
	want.Node.OfflinePublishURL = "http://127.0.0.1:4002/courier/offline"
	if cfg != want {
		t.Fatalf("ParseConfig(minimal) = %+v, want defaults %+v", cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	d := DefaultConfig()
	checks := []struct {
		name      string
		got, want any
	}{
		{"relay_url", d.RelayURL, ""},
		{"api.listen", d.API.Listen, "127.0.0.1:4100"},
		{"store.path", d.Store.Path, "courier.db"},
		{"store.synchronous", d.Store.Synchronous, "full"},
		{"delivery.relay_grace", d.Delivery.RelayGrace, 10 * time.Second},
		{"delivery.publish_timeout", d.Delivery.PublishTimeout, 10 * time.Second},
		{"delivery.offline_max_attempts", d.Delivery.OfflineMaxAttempts, 10},
		{"delivery.offline_max_age", d.Delivery.OfflineMaxAge, 24 * time.Hour},
		{"delivery.retry_wait_min", d.Delivery.RetryWaitMin, time.Second},
		{"delivery.retry_wait_max", d.Delivery.RetryWaitMax, 5 * time.Minute},
		{"log.level", d.Log.Level, "info"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("default %s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if err := d.Validate(); err == nil || !strings.Contains(err.Error(), "node.offline_publish_url: is required") {
		t.Errorf("DefaultConfig().Validate() = %v, want node.offline_publish_url required", err)
	}
}

// TestExampleConfig keeps config.example.toml and the code in step: the
// example parses strictly, validates, documents every key, and shows each
// default as the default.
func TestExampleConfig(t *testing.T) {
	const path = "../config.example.toml"
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config.example.toml does not validate: %v", err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	for _, key := range tomlKeys(reflect.TypeOf(Config{}), "") {
		leaf := key[strings.LastIndex(key, ".")+1:]
		if !regexp.MustCompile(`(?m)^#? ?` + leaf + ` *=`).MatchString(text) {
			t.Errorf("config.example.toml does not show key %s (not even commented out)", key)
		}
	}
	if !strings.Contains(text, "delete this line to opt out of INDIRECT; the running sidecar notices") {
		t.Error("config.example.toml: the relay_url line must say how to opt out")
	}

	// The example sets everything that has a default to that default.
	want := DefaultConfig()
	want.RelayURL = cfg.RelayURL
	want.Node = cfg.Node
	want.Store.Path = filepath.Join("..", DefaultStorePath)
	if cfg != want {
		t.Errorf("config.example.toml differs from the defaults:\n got %+v\nwant %+v", cfg, want)
	}
	if cfg.RelayURL == "" || cfg.Node.SignURL == "" || cfg.Node.InboundURL == "" {
		t.Errorf("config.example.toml should show relay_url, node.sign_url and node.inbound_url set: %+v", cfg)
	}
}

// tomlKeys lists the dotted TOML keys of the leaves of struct type t.
func tomlKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		name := prefix + f.Tag.Get("toml")
		if f.Type.Kind() == reflect.Struct {
			keys = append(keys, tomlKeys(f.Type, name+".")...)
		} else {
			keys = append(keys, name)
		}
	}
	return keys
}

func TestParseConfig(t *testing.T) {
	cfg := mustParse(t, `
relay_url = "wss://relay.example.org/"
[api]
listen = "0.0.0.0:4100"
token = "0123456789abcdef0123"
[node]
offline_publish_url = "https://node.local/courier/offline"
inbound_url = "http://127.0.0.1:4002/courier/inbound"
sign_url = "http://127.0.0.1:4002/ob/signmessage"
[store]
path = "/var/lib/courier/courier.db"
synchronous = "normal"
[delivery]
relay_grace = "0s"
publish_timeout = "5s"
offline_max_attempts = 3
offline_max_age = "1h30m"
retry_wait_min = "250ms"
retry_wait_max = "1m"
[log]
level = "debug"
`)
	want := Config{
		RelayURL: "wss://relay.example.org/",
		API:      APIConfig{Listen: "0.0.0.0:4100", Token: "0123456789abcdef0123", MaxMessageBytes: MaxMessageBytes},
		Node: NodeConfig{
			OfflinePublishURL: "https://node.local/courier/offline",
			InboundURL:        "http://127.0.0.1:4002/courier/inbound",
			SignURL:           "http://127.0.0.1:4002/ob/signmessage",
		},
		Store: StoreConfig{Path: "/var/lib/courier/courier.db", Synchronous: "normal", Retention: DefaultRetention},
		Delivery: DeliveryConfig{
			RelayGrace: 0, PublishTimeout: 5 * time.Second, OfflineMaxAttempts: 3,
			OfflineMaxAge: 90 * time.Minute, RetryWaitMin: 250 * time.Millisecond, RetryWaitMax: time.Minute,
		},
		Log: LogConfig{Level: "debug"},
	}
	if cfg != want {
		t.Fatalf("got  %+v\nwant %+v", cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Log.SlogLevel().String() != "DEBUG" {
		t.Errorf("SlogLevel = %v", cfg.Log.SlogLevel())
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name, toml string
		want       []string // substrings of the error
	}{
		{"relay_url list", `relay_url = ["ws://a/", "ws://b/"]`,
			[]string{"relay_url: exactly one relay URL is supported; a list is not"}},
		{"relay_url list of one", `relay_url = ["ws://a/"]`,
			[]string{"relay_url: exactly one relay URL is supported; a list is not"}},
		{"unknown top-level key", `relay_urls = "ws://a/"`,
			[]string{`relay_urls: unknown key`}},
		{"unknown nested key", "[api]\nlisten_addr = \"x\"",
			[]string{`api.listen_addr: unknown key`}},
		{"unknown table reported once", "[nodes]\na = 1\nb = 2",
			[]string{`nodes: unknown key`}},
		{"several unknown keys", "foo = 1\n[store]\nbar = 2",
			[]string{"foo: unknown key", "store.bar: unknown key"}},
		{"duration as number", "[delivery]\nrelay_grace = 10",
			[]string{`delivery.relay_grace: write a duration as a string with a unit`}},
		{"retention as number", "[store]\nretention = 72",
			[]string{`store.retention: write a duration as a string with a unit`}},
		{"bad duration", "[delivery]\nretry_wait_max = \"5 minutes\"",
			[]string{"delivery.retry_wait_max", "5 minutes"}},
		{"wrong type", "[api]\nlisten = 4100",
			[]string{"api.listen"}},
		{"not TOML", "relay_url = ", []string{"parse config"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig(strings.NewReader(tt.toml))
			if err == nil {
				t.Fatal("ParseConfig succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tt.name == "unknown table reported once" && strings.Contains(err.Error(), "nodes.a") {
				t.Errorf("error %q reports keys inside an unknown table", err)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	base := func() Config {
		c := DefaultConfig()
		c.RelayURL = "ws://127.0.0.1:8080/"
		c.Node.OfflinePublishURL = "http://127.0.0.1:4002/courier/offline"
		c.Node.SignURL = "http://127.0.0.1:4002/ob/signmessage"
		return c
	}
	if err := base().Validate(); err != nil {
		t.Fatalf("base config: %v", err)
	}
	const token = "0123456789abcdef"
	ok := []struct {
		name   string
		mutate func(*Config)
	}{
		{"opted out without sign_url", func(c *Config) { c.RelayURL = ""; c.Node.SignURL = "" }},
		{"wss relay", func(c *Config) { c.RelayURL = "wss://relay.example.org/ws" }},
		{"ipv6 loopback", func(c *Config) { c.API.Listen = "[::1]:4100" }},
		{"localhost", func(c *Config) { c.API.Listen = "localhost:0" }},
		{"other loopback", func(c *Config) { c.API.Listen = "127.0.0.2:4100" }},
		{"public with token", func(c *Config) { c.API.Listen = ":4100"; c.API.Token = token }},
		{"zero relay grace", func(c *Config) { c.Delivery.RelayGrace = 0 }},
		{"normal sync", func(c *Config) { c.Store.Synchronous = "normal" }},
		{"min equals max", func(c *Config) { c.Delivery.RetryWaitMax = c.Delivery.RetryWaitMin }},
		{"relay_host", func(c *Config) { c.RelayHost = "relay.example.org" }},
		{"relay_host with port", func(c *Config) { c.RelayHost = "relay.example.org:8443" }},
		{"relay_host left after opting out", func(c *Config) { c.RelayURL, c.RelayHost = "", "relay.example.org" }},
		{"basic auth", func(c *Config) { c.Node.Username, c.Node.PasswordFile = "courier", "/etc/courier/pw" }},
		{"cookie", func(c *Config) { c.Node.CookieFile = "/var/lib/openbazaar/.cookie" }},
		{"small message limit", func(c *Config) { c.API.MaxMessageBytes = 1 }},
		{"short retention", func(c *Config) { c.Store.Retention = time.Minute }},
	}
	for _, tt := range ok {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mutate(&c)
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}

	bad := []struct {
		name   string
		mutate func(*Config)
		want   string // the error starts a line with this
	}{
		{"relay http", func(c *Config) { c.RelayURL = "http://relay/" }, "relay_url: "},
		{"relay_host a URL", func(c *Config) { c.RelayHost = "wss://relay.example.org/" }, "relay_host: "},
		{"relay_host with a space", func(c *Config) { c.RelayHost = "relay example" }, "relay_host: "},
		{"username alone", func(c *Config) { c.Node.Username = "courier" }, "node.username"},
		{"password_file alone", func(c *Config) { c.Node.PasswordFile = "/etc/courier/pw" }, "node.username"},
		{"message limit 0", func(c *Config) { c.API.MaxMessageBytes = 0 }, "api.max_message_bytes: "},
		{"message limit over 16 MiB", func(c *Config) { c.API.MaxMessageBytes = MaxMessageBytes + 1 }, "api.max_message_bytes: "},
		{"retention 0", func(c *Config) { c.Store.Retention = 0 }, "store.retention: "},
		{"relay no host", func(c *Config) { c.RelayURL = "ws:///x" }, "relay_url: "},
		{"relay not a URL", func(c *Config) { c.RelayURL = "ws://bad host/" }, "relay_url: "},
		{"relay bare host", func(c *Config) { c.RelayURL = "relay.example.org" }, "relay_url: "},
		{"listen empty", func(c *Config) { c.API.Listen = "" }, "api.listen: "},
		{"listen no port", func(c *Config) { c.API.Listen = "127.0.0.1" }, "api.listen: "},
		{"listen bad port", func(c *Config) { c.API.Listen = "127.0.0.1:http" }, "api.listen: "},
		{"all interfaces without token", func(c *Config) { c.API.Listen = ":4100" }, "api.token: required"},
		{"public ip without token", func(c *Config) { c.API.Listen = "192.0.2.1:4100" }, "api.token: required"},
		{"host name without token", func(c *Config) { c.API.Listen = "sidecar.lan:4100" }, "api.token: required"},
		{"short token", func(c *Config) { c.API.Token = "secret" }, "api.token: is 6 characters"},
		{"offline url missing", func(c *Config) { c.Node.OfflinePublishURL = "" }, "node.offline_publish_url: is required"},
		{"offline url ws", func(c *Config) { c.Node.OfflinePublishURL = "ws://node/" }, "node.offline_publish_url: "},
		{"offline url relative", func(c *Config) { c.Node.OfflinePublishURL = "/courier/offline" }, "node.offline_publish_url: "},
		{"inbound url bad", func(c *Config) { c.Node.InboundURL = "ftp://node/" }, "node.inbound_url: "},
		{"sign url missing", func(c *Config) { c.Node.SignURL = "" }, "node.sign_url: is required when relay_url is set"},
		{"sign url bad", func(c *Config) { c.Node.SignURL = "http://" }, "node.sign_url: "},
		{"store path empty", func(c *Config) { c.Store.Path = "" }, "store.path: "},
		{"synchronous", func(c *Config) { c.Store.Synchronous = "FULL" }, "store.synchronous: "},
		{"negative grace", func(c *Config) { c.Delivery.RelayGrace = -time.Second }, "delivery.relay_grace: "},
		{"zero publish timeout", func(c *Config) { c.Delivery.PublishTimeout = 0 }, "delivery.publish_timeout: "},
		{"zero max age", func(c *Config) { c.Delivery.OfflineMaxAge = 0 }, "delivery.offline_max_age: "},
		{"zero attempts", func(c *Config) { c.Delivery.OfflineMaxAttempts = 0 }, "delivery.offline_max_attempts: "},
		{"zero wait min", func(c *Config) { c.Delivery.RetryWaitMin = 0 }, "delivery.retry_wait_min: "},
		{"max below min", func(c *Config) { c.Delivery.RetryWaitMax = time.Millisecond }, "delivery.retry_wait_max: "},
		{"log level", func(c *Config) { c.Log.Level = "verbose" }, "log.level: "},
		{"log level empty", func(c *Config) { c.Log.Level = "" }, "log.level: "},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mutate(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate succeeded, want an error")
			}
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(tt.want)).MatchString(err.Error()) {
				t.Errorf("Validate = %q, want a line starting %q", err, tt.want)
			}
		})
	}

	// All problems are reported at once, one line each.
	c := base()
	c.Node.OfflinePublishURL = ""
	c.Store.Synchronous = "fast"
	c.Log.Level = "loud"
	if err := c.Validate(); err == nil || strings.Count(err.Error(), "\n") != 2 {
		t.Errorf("Validate with three problems = %q, want three lines", err)
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "courier.toml")
	if err := os.WriteFile(path, []byte(minimalTOML), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "courier.db"); cfg.Store.Path != want {
		t.Errorf("relative store.path resolved to %q, want %q", cfg.Store.Path, want)
	}

	if err := os.WriteFile(path, []byte(minimalTOML+"[store]\npath = \"/abs/q.db\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cfg, err := LoadConfig(path); err != nil || cfg.Store.Path != "/abs/q.db" {
		t.Errorf("absolute store.path: %q, %v", cfg.Store.Path, err)
	}

	// The node's credential files, like store.path, relative to the file.
	if !strings.Contains(minimalTOML, "[node]") {
		t.Fatal("minimalTOML has no [node] table")
	}
	creds := strings.Replace(minimalTOML, "[node]\n", "[node]\nusername = \"courier\"\npassword_file = \"secrets/pw\"\ncookie_file = \"/var/lib/openbazaar/.cookie\"\n", 1)
	if err := os.WriteFile(path, []byte(creds), 0o600); err != nil {
		t.Fatal(err)
	}
	if cfg, err := LoadConfig(path); err != nil || cfg.Node.PasswordFile != filepath.Join(dir, "secrets", "pw") || cfg.Node.CookieFile != "/var/lib/openbazaar/.cookie" {
		t.Errorf("credential files: %q, %q, %v", cfg.Node.PasswordFile, cfg.Node.CookieFile, err)
	}

	if err := os.WriteFile(path, []byte("bogus = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(path); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "bogus: unknown key") {
		t.Errorf("LoadConfig(bad) = %v, want an error naming the file and the key", err)
	}
	if _, err := LoadConfig(filepath.Join(dir, "missing.toml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadConfig(missing) = %v, want not-exist", err)
	}
}
