package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"courier/internal/syncbuf"
	"courier/relay/redisstore/redistest"
)

func TestRedactURL(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"redis://:s3cret@127.0.0.1:6379/2", "redis://:xxxxx@127.0.0.1:6379/2"},
		{"rediss://courier:s3cret@redis.example.org:6380/0", "rediss://courier:xxxxx@redis.example.org:6380/0"},
		{"unix://courier:s3cret@/run/redis/redis.sock?db=3", "unix://courier:xxxxx@/run/redis/redis.sock?db=3"},
		{"redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"},
		{"redis://courier@127.0.0.1:6379/0", "redis://courier@127.0.0.1:6379/0"},
		{"redis://:s3cret@host:port/0\x7f", "[not a URL]"},
	} {
		if got := redactURL(c.in); got != c.want {
			t.Errorf("redactURL(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// courier-relay on a Redis store whose store.url carries a password logs
// where its store is without the password: the scheme, user, socket and
// database stay, the password is "xxxxx".
func TestStoreURLPasswordNotLogged(t *testing.T) {
	const password = "pw-7d1c0e5b9a"
	srv := redistest.Start(t, redistest.Options{Args: []string{"--user", "courier", "on", ">" + password, "~*", "&*", "+@all"}})
	storeURL := "unix://courier:" + password + "@" + srv.Socket + "?db=0"
	cfg := writeConfig(t, `
public_host = "relay.test"
log_level = "debug"
drain_delay = "0s"
[store]
driver = "redis"
url = "`+storeURL+`"
`)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncbuf.Buffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-config", cfg, "-listen", "127.0.0.1:0"}, &stdout, &stderr) }()
	listening := regexp.MustCompile(`"courier-relay listening".*`)
	var line string
	deadline := time.Now().Add(15 * time.Second)
	for line == "" {
		line = listening.FindString(stderr.String())
		if line != "" {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run returned %v before listening; stderr:\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no listening line; stderr:\n%s", stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if want := "unix://courier:xxxxx@" + srv.Socket + "?db=0"; !strings.Contains(line, want) {
		t.Errorf("listening line %q does not name the store as %q", line, want)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not return after the signal")
	}
	if out := stderr.String() + stdout.String(); strings.Contains(out, password) {
		t.Errorf("the store password is in the output:\n%s", out)
	}
}

// A store.url that does not parse is refused naming the key, without
// quoting it: net/url's error would carry the password.
func TestBadStoreURLErrorHidesPassword(t *testing.T) {
	const password = "pw-0b6e44f1"
	cfg := writeConfig(t, `
[store]
driver = "redis"
url = "redis://courier:`+password+`@127.0.0.1:63x79/0"
`)
	var stdout, stderr syncbuf.Buffer
	err := run(context.Background(), []string{"-config", cfg, "-listen", "127.0.0.1:0"}, &stdout, &stderr)
	if err == nil {
		t.Fatal("run accepted a store.url with a bad port")
	}
	out := err.Error() + stderr.String() + stdout.String()
	if !strings.Contains(out, "store.url") {
		t.Errorf("the error does not name store.url: %v", err)
	}
	if strings.Contains(out, password) {
		t.Errorf("the store password is in the error: %v\n%s", err, stderr.String())
	}
}
