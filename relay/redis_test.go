package relay_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"courier/relay"
	"courier/relay/redisstore"
	"courier/relay/redisstore/redistest"
)

var redisNamespaces atomic.Int64

// newRedisEnv serves a relay on a Redis store in namespace ns of rs
// (instances with the same ns are one relay).
func newRedisEnv(t testing.TB, rs *redistest.Server, ns string, mutate func(*relay.Config)) (*env, *redisstore.Store) {
	t.Helper()
	cfg := testConfig(t)
	cfg.Store = relay.StoreConfig{Driver: "redis", URL: rs.URL(), Namespace: ns}
	if mutate != nil {
		mutate(&cfg)
	}
	rdb, err := redisstore.NewClient(cfg.Store)
	if err != nil {
		t.Fatal(err)
	}
	st, err := redisstore.Open(context.Background(), rdb, redisstore.Options{
		Quota: cfg.Limits.Quota(), Namespace: ns, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := relay.New(cfg, st, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	e := &env{t: t, cfg: cfg, srv: srv, hs: hs, url: "ws" + strings.TrimPrefix(hs.URL, "http"), http: hs.URL}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("server close: %v", err)
		}
		hs.Close()
		st.Close()
	})
	return e, st
}

func newNamespace() string { return fmt.Sprintf("rt%d", redisNamespaces.Add(1)) }

func readyz(t testing.TB, e *env) int {
	t.Helper()
	resp, err := http.Get(e.http + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestRedisReadyz: /readyz is 503 while Redis is unreachable, 200 again
// once it is back.
func TestRedisReadyz(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	e, _ := newRedisEnv(t, rs, newNamespace(), nil)
	if code := readyz(t, e); code != 200 {
		t.Fatalf("readyz with Redis up: %d", code)
	}
	rs.Stop()
	if code := readyz(t, e); code != 503 {
		t.Fatalf("readyz with Redis down: %d, want 503", code)
	}
	rs.Restart()
	eventually(t, "readyz 200 after Redis is back", func() bool { return readyz(t, e) == 200 })
}

// TestRedisRelayOneInstance: the relay's basics on the Redis store: a
// level-2 publish to a connected recipient is delivered, one to an absent
// recipient is queued and replayed when it connects.
func TestRedisRelayOneInstance(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	e, _ := newRedisEnv(t, rs, newNamespace(), nil)
	alice, bob := newIdentity(t, 1), newIdentity(t, 2)
	pub := e.dial()
	pub.auth2(alice, 0)

	pub.publish(ciphertext(100, "queued for bob"), bob.ID(), "q")
	r := pub.expectResult("queued")
	rcv := e.dial()
	got := rcv.auth2(bob, 1)
	if got[0].ID != r.ID {
		t.Fatalf("replayed %s, want %s", got[0].ID, r.ID)
	}
	rcv.ack(r.ID)
	rcv.barrier()
	for i := range 5 {
		pub.publish(ciphertext(100, fmt.Sprintf("live %d", i)), bob.ID(), fmt.Sprint(i))
		d := rcv.expectDelivery()
		rcv.ack(d.ID)
		pub.expectResult("delivered")
	}
}
