package upstream_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"courier/upstream"
)

// scriptedSOCKS is a SOCKS5 server whose answers a test writes: it reads
// the greeting, lets answer reply to it and to the CONNECT request (whose
// target it records), then answer may go on with the connection. It
// counts the connections.
type scriptedSOCKS struct {
	ln      net.Listener
	conns   atomic.Int32
	mu      sync.Mutex
	targets []string // "atyp host:port" of each CONNECT
	wg      sync.WaitGroup
}

func startScriptedSOCKS(t *testing.T, answer func(c net.Conn, s *scriptedSOCKS)) *scriptedSOCKS {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptedSOCKS{ln: ln}
	var (
		mu  sync.Mutex
		all []net.Conn
	)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			mu.Lock()
			all = append(all, c)
			mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				answer(c, s)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range all {
			c.Close()
		}
		mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// greet reads the client's greeting and accepts "no authentication".
func greet(c net.Conn) bool {
	var h [2]byte
	if _, err := io.ReadFull(c, h[:]); err != nil || h[0] != 5 {
		return false
	}
	if _, err := io.ReadFull(c, make([]byte, h[1])); err != nil {
		return false
	}
	_, err := c.Write([]byte{5, 0})
	return err == nil
}

// request reads a CONNECT request and records its target.
func (s *scriptedSOCKS) request(c net.Conn) bool {
	var h [4]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return false
	}
	var host string
	switch h[3] {
	case 1, 4:
		ip := make([]byte, map[byte]int{1: 4, 4: 16}[h[3]])
		if _, err := io.ReadFull(c, ip); err != nil {
			return false
		}
		host = "ip " + net.IP(ip).String()
	case 3:
		var n [1]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return false
		}
		name := make([]byte, n[0])
		if _, err := io.ReadFull(c, name); err != nil {
			return false
		}
		host = "name " + string(name)
	default:
		return false
	}
	var port [2]byte
	if _, err := io.ReadFull(c, port[:]); err != nil {
		return false
	}
	s.mu.Lock()
	s.targets = append(s.targets, host)
	s.mu.Unlock()
	return true
}

func (s *scriptedSOCKS) url() *url.URL {
	return &url.URL{Scheme: "socks5h", Host: s.ln.Addr().String()}
}

func (s *scriptedSOCKS) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.targets...)
}

// Hostile or broken SOCKS5 answers: each attempt ends with an error that
// names the proxy (never hanging past the handshake timeout), the client
// keeps retrying with its backoff, and nothing crashes. The relay's name
// always goes to the proxy as a name.
func TestHostileSOCKSAnswers(t *testing.T) {
	garbage := bytes.Repeat([]byte("\x00\xffgarbage"), 1<<14)
	for _, tc := range []struct {
		name   string
		answer func(c net.Conn, s *scriptedSOCKS)
	}{
		{"greeting answered with HTTP", func(c net.Conn, s *scriptedSOCKS) {
			_, _ = io.ReadFull(c, make([]byte, 3))
			_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
		}},
		{"closes after the greeting", func(c net.Conn, s *scriptedSOCKS) {
			greet(c)
		}},
		{"closes in the middle of its reply", func(c net.Conn, s *scriptedSOCKS) {
			if greet(c) && s.request(c) {
				_, _ = c.Write([]byte{5, 0, 0, 4, 0, 0}) // an IPv6 bound address, cut short
			}
		}},
		{"unknown address type in its reply", func(c net.Conn, s *scriptedSOCKS) {
			if greet(c) && s.request(c) {
				_, _ = c.Write([]byte{5, 0, 0, 9, 1, 2, 3, 4, 0, 80})
			}
		}},
		{"refuses the CONNECT", func(c net.Conn, s *scriptedSOCKS) {
			if greet(c) && s.request(c) {
				_, _ = c.Write([]byte{5, 5, 0, 1, 0, 0, 0, 0, 0, 0})
			}
		}},
		{"accepts, then streams garbage", func(c net.Conn, s *scriptedSOCKS) {
			if greet(c) && s.request(c) {
				reply := append([]byte{5, 0, 0, 3, 255}, bytes.Repeat([]byte("b"), 255)...) // the longest bound name
				reply = binary.BigEndian.AppendUint16(reply, 80)
				_, _ = c.Write(reply)
				for i := 0; i < 64; i++ {
					if _, err := c.Write(garbage); err != nil {
						return
					}
				}
			}
		}},
		{"accepts, then says nothing", func(c net.Conn, s *scriptedSOCKS) {
			if greet(c) && s.request(c) {
				_, _ = c.Write([]byte{5, 0, 0, 1, 127, 0, 0, 1, 0, 80})
				_, _ = io.Copy(io.Discard, c)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startScriptedSOCKS(t, tc.answer)
			a := newNode(1)
			_, states := a.client(t, "ws://relay.invalid/", func(c *upstream.Config) {
				c.Proxy = p.url()
				c.HandshakeTimeout = time.Second
			})
			var last upstream.Status
			deadline := time.After(waitTimeout)
			for p.conns.Load() < 3 || last.LastError == "" {
				select {
				case last = <-states:
					if last.State == upstream.StateConnected {
						t.Fatalf("connected through a broken proxy: %+v", last)
					}
				case <-deadline:
					t.Fatalf("after %d connections to the proxy, last status %+v; want errors and retries", p.conns.Load(), last)
				}
			}
			if !strings.Contains(last.LastError, p.ln.Addr().String()) {
				t.Errorf("last error %q does not name the proxy", last.LastError)
			}
			for _, target := range p.seen() {
				if target != "name relay.invalid" {
					t.Errorf("the proxy was asked for %q, want the name relay.invalid", target)
				}
			}
		})
	}
}

// A proxy that answers with a bound address of another family (IPv6,
// while it was asked for a name and reached IPv4) is fine: the client
// ignores the bound address, and the session works through it.
func TestSOCKSBoundAddressOtherFamily(t *testing.T) {
	r := startRelay(t, nil)
	relayAddr := strings.TrimSuffix(strings.TrimPrefix(r.URL(), "ws://"), "/")
	p := startScriptedSOCKS(t, func(c net.Conn, s *scriptedSOCKS) {
		if !greet(c) || !s.request(c) {
			return
		}
		up, err := net.Dial("tcp", relayAddr)
		if err != nil {
			return
		}
		defer up.Close()
		reply := append([]byte{5, 0, 0, 4}, net.ParseIP("2001:db8::1")...)
		if _, err := c.Write(binary.BigEndian.AppendUint16(reply, 1080)); err != nil {
			return
		}
		go func() { _, _ = io.Copy(up, c); up.Close() }()
		_, _ = io.Copy(c, up)
	})
	a := newNode(1)
	_, states := a.client(t, "ws://relay.test/", func(c *upstream.Config) { c.Proxy = p.url() })
	waitState(t, states, upstream.StateConnected)
	for _, target := range p.seen() {
		if target != "name relay.test" {
			t.Errorf("the proxy was asked for %q, want the name relay.test", target)
		}
	}
}
