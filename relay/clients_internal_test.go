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
