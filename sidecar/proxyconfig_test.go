package sidecar

import (
	"strings"
	"testing"
)

func TestValidateRelayProxy(t *testing.T) {
	base := func() Config {
		c := DefaultConfig()
		c.RelayURL = "wss://relay.example.org/"
		c.Node.OfflinePublishURL = "http://127.0.0.1:4002/courier/offline"
		c.Node.SignURL = "http://127.0.0.1:4002/ob/signmessage"
		return c
	}
	const secret = "pw-91c2d7"
	ok := []struct{ name, proxy, relayURL string }{
		{"tor default", "socks5://127.0.0.1:9050", ""},
		{"socks5h", "socks5h://127.0.0.1:9050", ""},
		{"trailing slash", "socks5h://127.0.0.1:9050/", ""},
		{"credentials", "socks5h://courier:" + secret + "@127.0.0.1:1080", ""},
		{"proxy by name", "socks5h://localhost:9050", ""},
		{"ipv6 proxy", "socks5h://[::1]:9050", ""},
		{"ws to an onion service through the proxy", "socks5h://127.0.0.1:9050", "ws://" + strings.Repeat("a", 56) + ".onion/"},
		{"no relay_url: unused but checked", "socks5h://127.0.0.1:9050", "-"},
	}
	for _, tt := range ok {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			c.RelayProxy = tt.proxy
			switch tt.relayURL {
			case "":
			case "-":
				c.RelayURL, c.Node.SignURL = "", ""
			default:
				c.RelayURL = tt.relayURL
			}
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}

	bad := []struct{ name, proxy, relayURL, want string }{
		{"http proxy", "http://127.0.0.1:8118", "", "only SOCKS5"},
		{"socks4", "socks4://127.0.0.1:9050", "", `scheme "socks4"`},
		{"no scheme", "127.0.0.1:9050", "", "socks5h://host:port"},
		{"no port", "socks5h://127.0.0.1", "", "port from 1 to 65535"},
		{"port zero", "socks5h://127.0.0.1:0", "", "port from 1 to 65535"},
		{"bad port with password", "socks5h://courier:" + secret + "@127.0.0.1:90x50", "", "not a URL"},
		{"path with password", "socks5h://courier:" + secret + "@127.0.0.1:9050/tor", "", "path, query or fragment"},
		{"no host", "socks5h://:9050", "", "names no host"},
		{"ws to an onion service without a proxy", "", "ws://" + strings.Repeat("a", 56) + ".onion/", "allow_insecure"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			c.RelayProxy = tt.proxy
			if tt.relayURL != "" {
				c.RelayURL = tt.relayURL
			}
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			key := "relay_proxy: "
			if tt.proxy == "" {
				key = "relay_url: "
			}
			if !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want one naming %q and saying %q", err, key, tt.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("the error shows the proxy password: %v", err)
			}
		})
	}
}

// relay_proxy is read from TOML and shown without credentials.
func TestRelayProxyParsed(t *testing.T) {
	cfg := mustParse(t, minimalTOML+"\n")
	if cfg.RelayProxy != "" {
		t.Fatalf("default relay_proxy = %q, want empty", cfg.RelayProxy)
	}
	cfg = mustParse(t, "relay_proxy = \"socks5h://u:p@127.0.0.1:9050\"\n"+minimalTOML)
	u, err := ParseRelayProxy(cfg.RelayProxy)
	if err != nil {
		t.Fatal(err)
	}
	if got := RedactProxy(u); got != "socks5h://127.0.0.1:9050" {
		t.Errorf("RedactProxy = %q", got)
	}
}
