package localapi_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"courier/internal/dantetest"
	"courier/localapi"
	"courier/sidecar"
	st "courier/sidecar/sidecartest"
)

// Through a SOCKS5 proxy whose URL carries a user and password, the status
// page and /v1/status say "via proxy" with the proxy's scheme, host and
// port, and never the password.
func TestStatusShowsProxyWithoutPassword(t *testing.T) {
	const password = "pw-c4f19e"
	proxy := dantetest.Start(t, dantetest.Options{}) // no authentication asked: the credentials go unused
	r := st.StartRelay(t, nil, nil)
	n := st.NewNode(t, "operator")
	cfg := st.Config(n, r.URL(), t.TempDir())
	cfg.RelayProxy = proxy.URL("socks5h", "proxyuser-7b:"+password+"@")
	s := st.StartSidecar(t, n, cfg, st.Options())
	s.WaitRelay(sidecar.RelayConnected)
	hs := httptest.NewServer(localapi.New(s.E, "", st.Logger()))
	t.Cleanup(hs.Close)

	for _, path := range []string{"/", "/v1/status"} {
		resp, err := http.Get(hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		page := string(body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, page)
		}
		if !strings.Contains(page, "socks5h://"+proxy.Addr) {
			t.Errorf("GET %s does not show the proxy socks5h://%s:\n%s", path, proxy.Addr, page)
		}
		if path == "/" && !strings.Contains(page, "via proxy") {
			t.Errorf("the status page does not say \"via proxy\":\n%s", page)
		}
		if strings.Contains(page, password) || strings.Contains(page, "proxyuser-7b") {
			t.Errorf("GET %s shows the proxy's credentials", path)
		}
	}
}
