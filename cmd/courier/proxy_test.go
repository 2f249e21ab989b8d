package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"courier/localapi/apiclient"
	st "courier/sidecar/sidecartest"
)

// A bad relay_proxy stops courier at start with an error naming the key,
// and neither the error nor the output shows the proxy's password.
func TestRelayProxyConfigError(t *testing.T) {
	const password = "pw-3e8a1c"
	for _, tc := range []struct{ name, proxy, want string }{
		{"http proxy", "http://courier:" + password + "@127.0.0.1:8118", "only SOCKS5"},
		{"bad port", "socks5h://courier:" + password + "@127.0.0.1:90x50", "not a URL"},
		{"no port", "socks5h://courier:" + password + "@127.0.0.1", "port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "courier.toml")
			toml := "relay_url = \"ws://127.0.0.1:8080/\"\nrelay_proxy = \"" + tc.proxy + "\"\n" +
				"[node]\noffline_publish_url = \"http://127.0.0.1:4002/courier/offline\"\nsign_url = \"http://127.0.0.1:4002/ob/signmessage\"\n"
			if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), st.WaitTimeout)
			defer cancel()
			var out, errb bytes.Buffer
			err := run(ctx, []string{"-config", path}, &out, &errb)
			if err == nil {
				t.Fatal("courier started with a bad relay_proxy")
			}
			if !strings.Contains(err.Error(), "relay_proxy: ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q: want relay_proxy named and %q", err, tc.want)
			}
			if all := err.Error() + out.String() + errb.String(); strings.Contains(all, password) {
				t.Errorf("the proxy password is shown: %s", all)
			}
		})
	}
}

func TestPrintStatusViaProxy(t *testing.T) {
	var out bytes.Buffer
	printStatus(&out, apiclient.Status{Relay: apiclient.RelayStatus{State: "connected", Proxy: "socks5h://127.0.0.1:9050"}})
	if !regexp.MustCompile(`(?m)^via proxy +socks5h://127\.0\.0\.1:9050$`).MatchString(out.String()) {
		t.Errorf("status lacks the proxy line:\n%s", out.String())
	}
	out.Reset()
	printStatus(&out, apiclient.Status{Relay: apiclient.RelayStatus{State: "connected"}})
	if strings.Contains(out.String(), "via proxy") {
		t.Errorf("a direct connection shows a proxy:\n%s", out.String())
	}
}
