package upstream_test

import (
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"courier/upstream"
)

// hangingProxy accepts TCP connections and never answers: a SOCKS5 proxy
// that hangs mid-handshake. It counts the connections and those the
// client closed.
type hangingProxy struct {
	ln     net.Listener
	mu     sync.Mutex
	opened int
	closed int
	wg     sync.WaitGroup
}

func startHangingProxy(t *testing.T) *hangingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &hangingProxy{ln: ln}
	var conns []net.Conn
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.opened++
			conns = append(conns, c)
			p.mu.Unlock()
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				_, _ = io.Copy(io.Discard, c) // the greeting, never answered; EOF when the client gives up
				p.mu.Lock()
				p.closed++
				p.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *hangingProxy) counts() (opened, closed int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.opened, p.closed
}

// A proxy that accepts and then says nothing: each attempt gives up at the
// handshake timeout, closes its connection to the proxy, reports an error
// naming the proxy, and the client tries again after its backoff.
func TestProxyThatHangsTimesOut(t *testing.T) {
	r := startRelay(t, nil)
	p := startHangingProxy(t)
	n := newNode(1)
	c, states := n.client(t, r.URL(), func(c *upstream.Config) {
		c.Proxy = &url.URL{Scheme: "socks5h", Host: p.ln.Addr().String()}
		c.HandshakeTimeout = 300 * time.Millisecond
	})
	deadline := time.After(waitTimeout)
	for {
		opened, closed := p.counts()
		if opened >= 3 && closed >= 2 {
			break
		}
		select {
		case s := <-states:
			if s.State == upstream.StateConnected {
				t.Fatal("connected through a proxy that never answered")
			}
		case <-deadline:
			t.Fatalf("after %s: %d connections to the proxy, %d closed by the client; want 3 and 2", waitTimeout, opened, closed)
		case <-time.After(20 * time.Millisecond):
		}
	}
	st := c.Status()
	if !strings.Contains(st.LastError, "SOCKS5 proxy "+p.ln.Addr().String()) ||
		!(strings.Contains(st.LastError, "deadline") || strings.Contains(st.LastError, "timeout")) {
		t.Errorf("last error %q: want the proxy named and a timeout", st.LastError)
	}
	if got := len(n.received); got != 0 {
		t.Errorf("received %d messages", got)
	}
}

// Only SOCKS5 proxies are taken.
func TestProxySchemeChecked(t *testing.T) {
	n := newNode(1)
	for _, u := range []*url.URL{
		{Scheme: "http", Host: "127.0.0.1:8080"},
		{Scheme: "socks4", Host: "127.0.0.1:9050"},
		{Scheme: "socks5h"},
	} {
		_, err := upstream.New(upstream.Config{URL: "ws://127.0.0.1:1/", Sign: n.sign, Handle: n.handle, Proxy: u})
		if err == nil || !strings.Contains(err.Error(), "socks5") {
			t.Errorf("proxy %v: err %v, want a refusal saying socks5", u, err)
		}
	}
}
