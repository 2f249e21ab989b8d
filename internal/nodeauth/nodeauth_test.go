package nodeauth

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// applied is what Apply put on a request.
type applied struct {
	user, pass string
	basic      bool
	cookie     string
}

func apply(t *testing.T, c *Creds) (applied, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://127.0.0.1/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(req); err != nil {
		return applied{}, err
	}
	var a applied
	a.user, a.pass, a.basic = req.BasicAuth()
	if ck, err := req.Cookie(CookieName); err == nil {
		a.cookie = ck.Value
	}
	return a, nil
}

func TestApply(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	write(t, pw, "pass word\r\n")
	cookie := filepath.Join(dir, ".cookie")
	write(t, cookie, "OpenBazaar_Auth_Cookie=abc123\n")
	bare := filepath.Join(dir, "bare")
	write(t, bare, "  xyz \n")
	empty := filepath.Join(dir, "empty")
	write(t, empty, "OpenBazaar_Auth_Cookie=\n")
	missing := filepath.Join(dir, "missing")

	for _, tt := range []struct {
		name    string
		files   Files
		want    applied
		wantErr string // a part of the error; "" for none
	}{
		{"nothing configured", Files{}, applied{}, ""},
		{"basic auth", Files{Username: "ob", PasswordFile: pw}, applied{user: "ob", pass: "pass word", basic: true}, ""},
		{"cookie file as openbazaar-go writes it", Files{CookieFile: cookie}, applied{cookie: "abc123"}, ""},
		{"cookie file with the bare value", Files{CookieFile: bare}, applied{cookie: "xyz"}, ""},
		{"both", Files{Username: "ob", PasswordFile: pw, CookieFile: cookie}, applied{user: "ob", pass: "pass word", basic: true, cookie: "abc123"}, ""},
		{"empty cookie", Files{CookieFile: empty}, applied{}, "node.cookie_file " + empty + ": is empty"},
		{"missing cookie file", Files{CookieFile: missing}, applied{}, "node.cookie_file: open " + missing},
		{"missing password file", Files{Username: "ob", PasswordFile: missing}, applied{}, "node.password_file: open " + missing},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := New("node", tt.files)
			got, err := apply(t, c)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Apply = %v, want an error with %q", err, tt.wantErr)
				}
				if check := c.Check(); check == nil || check.Error() != err.Error() {
					t.Errorf("Check = %v, want %v", check, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Apply put %+v (%v), want %+v", got, err, tt.want)
			}
			if err := c.Check(); err != nil {
				t.Errorf("Check = %v", err)
			}
		})
	}
}

// TestStaleReadsAgain: after Stale (the node answered 401), the next Apply
// uses what the files hold now; without it, what was read stays in use for
// MaxAge, so that not every request reads two files.
func TestStaleReadsAgain(t *testing.T) {
	dir := t.TempDir()
	pw, cookie := filepath.Join(dir, "pw"), filepath.Join(dir, ".cookie")
	write(t, pw, "one")
	write(t, cookie, "OpenBazaar_Auth_Cookie=first")
	c := New("offline", Files{Username: "ob", PasswordFile: pw, CookieFile: cookie})
	if a, err := apply(t, c); err != nil || a.pass != "one" || a.cookie != "first" {
		t.Fatalf("first Apply: %+v, %v", a, err)
	}
	write(t, pw, "two")
	write(t, cookie, "OpenBazaar_Auth_Cookie=second")
	if a, err := apply(t, c); err != nil || a.pass != "one" || a.cookie != "first" {
		t.Fatalf("within MaxAge: %+v, %v; want what was read first", a, err)
	}
	c.Stale()
	if a, err := apply(t, c); err != nil || a.pass != "two" || a.cookie != "second" {
		t.Fatalf("after Stale: %+v, %v; want the files' new content", a, err)
	}

	// A file that goes away is an error naming the key, not the old value
	// sent on silently.
	if err := os.Remove(cookie); err != nil {
		t.Fatal(err)
	}
	c.Stale()
	if _, err := apply(t, c); err == nil || !strings.Contains(err.Error(), "offline.cookie_file") {
		t.Fatalf("cookie file removed: Apply = %v", err)
	}
}

// TestErrorsNeverQuoteSecrets: an error names the key and the file, never
// what the files hold.
func TestErrorsNeverQuoteSecrets(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	write(t, pw, "s3cret-password")
	cookieDir := filepath.Join(dir, "cookie-is-a-directory")
	if err := os.Mkdir(cookieDir, 0o700); err != nil {
		t.Fatal(err)
	}
	c := New("node", Files{Username: "ob", PasswordFile: pw, CookieFile: cookieDir})
	err := c.Check()
	if err == nil || !strings.Contains(err.Error(), "node.cookie_file") {
		t.Fatalf("Check = %v, want a node.cookie_file error", err)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("the error quotes the password: %v", err)
	}
}
