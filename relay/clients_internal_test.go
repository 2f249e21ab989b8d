package relay

import (
	"net/http"
	"strings"
	"testing"
)

func TestClientAddr(t *testing.T) {
	trusted, err := parsePrefixes([]string{"127.0.0.1", "10.0.0.0/8", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("192.0.2.1, ", 10000) + "198.51.100.2"
	for _, tt := range []struct {
		name    string
		remote  string
		xff     []string
		trusted bool // use the trusted list; else none
		want    string
	}{
		{"no trusted proxies: the header is ignored", "127.0.0.1:5000", []string{"203.0.113.1"}, false, "127.0.0.1:5000"},
		{"untrusted peer: ignored", "192.0.2.50:5000", []string{"203.0.113.1"}, true, "192.0.2.50:5000"},
		{"trusted peer names the client", "127.0.0.1:5000", []string{"203.0.113.1"}, true, "203.0.113.1"},
		{"IPv6 loopback front", "[::1]:5000", []string{"2001:db8::1"}, true, "2001:db8::1"},
		{"the client's own entries are skipped", "127.0.0.1:5000", []string{"1.1.1.1, 203.0.113.1"}, true, "203.0.113.1"},
		{"chained trusted fronts", "127.0.0.1:5000", []string{"203.0.113.1, 10.1.2.3"}, true, "203.0.113.1"},
		{"several header lines", "127.0.0.1:5000", []string{"1.1.1.1", "203.0.113.1"}, true, "203.0.113.1"},
		{"spaces and a port", "127.0.0.1:5000", []string{" 203.0.113.1:4444 "}, true, "203.0.113.1"},
		{"mapped IPv4", "127.0.0.1:5000", []string{"::ffff:203.0.113.1"}, true, "203.0.113.1"},
		{"no header: the front", "127.0.0.1:5000", nil, true, "127.0.0.1:5000"},
		{"garbage from the front: the front", "127.0.0.1:5000", []string{"not-an-address"}, true, "127.0.0.1:5000"},
		{"only trusted entries: the front", "127.0.0.1:5000", []string{"10.0.0.1, 10.0.0.2"}, true, "127.0.0.1:5000"},
		{"a huge header: only the last hops are read", "127.0.0.1:5000", []string{long}, true, "198.51.100.2"},
		{"too many trusted hops: the front", "127.0.0.1:5000", []string{"203.0.113.1" + strings.Repeat(", 10.0.0.1", maxForwardHops)}, true, "127.0.0.1:5000"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: tt.remote, Header: http.Header{}}
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			var list = trusted
			if !tt.trusted {
				list = nil
			}
			if got := clientAddr(r, list); got != tt.want {
				t.Errorf("clientAddr = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParsePrefixes(t *testing.T) {
	if _, err := parsePrefixes([]string{"127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"}); err != nil {
		t.Fatal(err)
	}
	_, err := parsePrefixes([]string{"127.0.0.1", "haproxy.local"})
	if err == nil || !strings.Contains(err.Error(), `entry 2, "haproxy.local"`) {
		t.Fatalf("a host name: %v, want an error naming entry 2", err)
	}
}

// TestClientAddrKeys: what the per-address limits count for clients
// behind a front: an IPv6 client by its /64 (two addresses of one /64
// share a slot, another /64 has its own), an IPv4-mapped front address
// trusted as the IPv4 one, a zone the front wrote dropped from the key.
func TestClientAddrKeys(t *testing.T) {
	trusted, err := parsePrefixes([]string{"127.0.0.1", "fd00::/8"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, remote, xff, want string
	}{
		{"IPv6 client behind an IPv4 front", "127.0.0.1:5000", "2001:db8:1:2::5", "addr:2001:db8:1:2::/64"},
		{"same /64", "127.0.0.1:5000", "2001:db8:1:2:ffff::9", "addr:2001:db8:1:2::/64"},
		{"another /64", "127.0.0.1:5000", "2001:db8:1:3::5", "addr:2001:db8:1:3::/64"},
		{"IPv6 front (a prefix) naming an IPv4 client", "[fd00::7]:5000", "203.0.113.9", "addr:203.0.113.9"},
		{"IPv4-mapped front", "[::ffff:127.0.0.1]:5000", "203.0.113.9", "addr:203.0.113.9"},
		{"a zone", "127.0.0.1:5000", "fe80::1%eth0", "addr:fe80::/64"},
		{"an untrusted IPv6 peer's header is ignored", "[2001:db8:9::1]:5000", "203.0.113.9", "addr:2001:db8:9::/64"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: tt.remote, Header: http.Header{"X-Forwarded-For": {tt.xff}}}
			if got := addrKey(clientAddr(r, trusted)); got != tt.want {
				t.Errorf("addrKey(clientAddr) = %q, want %q", got, tt.want)
			}
		})
	}
}
