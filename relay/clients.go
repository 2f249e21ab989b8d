package relay

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"

	"golang.org/x/time/rate"

	"courier/wire"
)

// clients holds what the relay limits per client address and per
// authenticated peer rather than per connection: open connections per
// address, subscribes per address, publishes per address (connections
// that have not authenticated) and per peer (all its connections). An
// entry lives while a connection uses it and until its buckets are full
// again, so it costs nothing to forget it.
type clients struct {
	lim LimitsConfig

	mu     sync.Mutex
	m      map[string]*clientState
	scanAt int // scan for idle entries when the map grows past this
}

// clientState is one address's or one peer's limits.
type clientState struct {
	key       string
	refs      int           // connections using the entry
	conns     int           // open connections, for an address
	publish   *rate.Limiter // nil: unlimited
	subscribe *rate.Limiter // for an address; nil: unlimited
}

func newClients(lim LimitsConfig) *clients {
	return &clients{lim: lim, m: make(map[string]*clientState), scanAt: 1024}
}

// limiter returns a token bucket, or nil for an unlimited rate (0).
func limiter(r float64, burst int) *rate.Limiter {
	if r <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(r), burst)
}

// anonymousPublish is the publish limit of an address: limits.publish_rate
// and publish_burst, lowered to anonymous_publish_rate and
// anonymous_publish_burst (0 on either side is no limit from that side).
func (l LimitsConfig) anonymousPublish() (float64, int) {
	switch {
	case l.PublishRate <= 0:
		return l.AnonymousPublishRate, l.AnonymousPublishBurst
	case l.AnonymousPublishRate <= 0:
		return l.PublishRate, l.PublishBurst
	}
	return min(l.PublishRate, l.AnonymousPublishRate), min(l.PublishBurst, l.AnonymousPublishBurst)
}

// addrKey is the key of a client address: the IPv4 address, or the /64 of
// an IPv6 one (what one subscriber line is usually given).
func addrKey(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return "addr:" + host
	}
	a = a.Unmap()
	if a.Is4() {
		return "addr:" + a.String()
	}
	p, _ := a.Prefix(64)
	return "addr:" + p.String()
}

// parsePrefixes reads trusted_proxies: addresses ("127.0.0.1", "::1") and
// CIDR prefixes ("10.0.0.0/8").
func parsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("entry %d, %s, is neither an address nor a CIDR prefix: write \"127.0.0.1\" or \"10.0.0.0/8\"", i+1, wire.Excerpt(s))
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// maxForwardHops is how many X-Forwarded-For entries, from the right, the
// relay looks at: fronts chained deeper than this are not expected, and a
// client's own long header costs nothing to skip.
const maxForwardHops = 8

// clientAddr is the address of the client behind r: the TCP peer, or,
// when the peer is a trusted proxy, the rightmost X-Forwarded-For entry
// that is not itself a trusted proxy. Entries left of that one were
// written by the client or by fronts nobody vouches for, so they are never
// used. A front that names no valid address leaves the front's own.
func clientAddr(r *http.Request, trusted []netip.Prefix) string {
	if len(trusted) == 0 {
		return r.RemoteAddr
	}
	peer, ok := parseHostAddr(r.RemoteAddr)
	if !ok || !within(peer, trusted) {
		return r.RemoteAddr
	}
	hdr := strings.Join(r.Header.Values("X-Forwarded-For"), ",")
	for hop := 0; hdr != "" && hop < maxForwardHops; hop++ {
		entry := hdr
		if i := strings.LastIndexByte(hdr, ','); i >= 0 {
			entry, hdr = hdr[i+1:], hdr[:i]
		} else {
			hdr = ""
		}
		a, ok := parseHostAddr(strings.TrimSpace(entry))
		if !ok {
			break
		}
		if !within(a, trusted) {
			return a.String()
		}
	}
	return r.RemoteAddr
}

// parseHostAddr reads "host:port", "[v6]:port" or a bare address.
func parseHostAddr(s string) (netip.Addr, bool) {
	if host, _, err := net.SplitHostPort(s); err == nil {
		s = host
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

func within(a netip.Addr, prefixes []netip.Prefix) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// openConn counts a new connection from an address. It reports false, and
// counts nothing, when the address has max_connections_per_ip open.
func (cs *clients) openConn(key string) (*clientState, bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	st := cs.getLocked(key, func(st *clientState) {
		r, b := cs.lim.anonymousPublish()
		st.publish = limiter(r, b)
		st.subscribe = limiter(cs.lim.SubscribeRate, cs.lim.SubscribeBurst)
	})
	if max := cs.lim.MaxConnectionsPerIP; max > 0 && st.conns >= max {
		cs.forgetLocked(st)
		return nil, false
	}
	st.conns++
	st.refs++
	return st, true
}

// closeConn uncounts a connection openConn counted.
func (cs *clients) closeConn(st *clientState) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	st.conns--
	st.refs--
	cs.forgetLocked(st)
}

// peer returns the entry of an authenticated peer, for one connection;
// release it with releasePeer.
func (cs *clients) peer(canonical string) *clientState {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	st := cs.getLocked("peer:"+canonical, func(st *clientState) {
		st.publish = limiter(cs.lim.PublishRate, cs.lim.PublishBurst)
	})
	st.refs++
	return st
}

func (cs *clients) releasePeer(st *clientState) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	st.refs--
	cs.forgetLocked(st)
}

func (cs *clients) getLocked(key string, init func(*clientState)) *clientState {
	st := cs.m[key]
	if st == nil {
		if len(cs.m) >= cs.scanAt {
			for _, old := range cs.m {
				cs.forgetLocked(old)
			}
			cs.scanAt = max(1024, 2*len(cs.m))
		}
		st = &clientState{key: key}
		init(st)
		cs.m[key] = st
	}
	return st
}

// forgetLocked drops an entry nobody uses whose buckets are full: a new
// entry would be the same.
func (cs *clients) forgetLocked(st *clientState) {
	if st.refs > 0 || !full(st.publish) || !full(st.subscribe) {
		return
	}
	delete(cs.m, st.key)
}

func full(l *rate.Limiter) bool {
	return l == nil || l.Tokens() >= float64(l.Burst())
}

// size reports the entries held, for tests.
func (cs *clients) size() int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return len(cs.m)
}
