// Package nodeauth holds the credentials of an OpenBazaar node's API and
// puts them on requests: HTTP basic auth (a user name and a password read
// from a file) and openbazaar-go's OpenBazaar_Auth_Cookie (read from the
// node's cookie file). The sidecar uses it for its node, the relay's
// OFFLINE bridge for its operator's node.
//
// The files are read again every MaxAge, and at once after Stale (the node
// answered 401 or 403): openbazaar-go writes a new cookie at every start,
// and an operator may rotate the password. Credentials go into requests
// only: errors name the configuration key and the file, never its content.
package nodeauth

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// CookieName is openbazaar-go's authentication cookie.
const CookieName = "OpenBazaar_Auth_Cookie"

// MaxAge is how long what was read from the files is used before they are
// read again.
const MaxAge = 5 * time.Second

// Files names the credentials, as configured.
type Files struct {
	Username     string
	PasswordFile string
	CookieFile   string
}

// Creds applies the credentials of Files to requests. Its zero value is
// not usable: make it with New. It is safe for concurrent use.
type Creds struct {
	files   Files
	section string // the configuration section, for errors: "node", "offline"

	mu       sync.Mutex
	readAt   time.Time // zero: read at the next Apply
	password string
	cookie   string
	err      error // the last read failed
}

// New returns the credentials of files, whose keys sit in the configuration
// section named section (for errors such as "node.cookie_file: …"). It does
// not read the files: Check or the first Apply does.
func New(section string, files Files) *Creds {
	return &Creds{files: files, section: section}
}

// Files returns what c was made for.
func (c *Creds) Files() Files { return c.files }

// Check reads the files now and returns what is wrong with them, if
// anything: for a refusal at start.
func (c *Creds) Check() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.read()
	return c.err
}

// Stale makes the next Apply read the files again.
func (c *Creds) Stale() {
	c.mu.Lock()
	c.readAt = time.Time{}
	c.mu.Unlock()
}

// Apply puts the credentials on req, reading the files again when what was
// read is older than MaxAge. It fails when a file cannot be read or the
// cookie file is empty; the request should not be sent then.
func (c *Creds) Apply(req *http.Request) error {
	if c.files == (Files{}) {
		return nil
	}
	c.mu.Lock()
	if c.readAt.IsZero() || time.Since(c.readAt) >= MaxAge {
		c.read()
	}
	password, cookie, err := c.password, c.cookie, c.err
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if c.files.Username != "" || password != "" {
		req.SetBasicAuth(c.files.Username, password)
	}
	if cookie != "" {
		req.AddCookie(&http.Cookie{Name: CookieName, Value: cookie})
	}
	return nil
}

// read reads the files into c; c.mu is held.
func (c *Creds) read() {
	c.readAt, c.err = time.Now(), nil
	c.password, c.cookie = "", ""
	if c.files.PasswordFile != "" {
		b, err := os.ReadFile(c.files.PasswordFile)
		if err != nil {
			c.err = fmt.Errorf("%s.password_file: %w", c.section, err)
			return
		}
		c.password = strings.TrimRight(string(b), "\r\n")
	}
	if c.files.CookieFile != "" {
		b, err := os.ReadFile(c.files.CookieFile)
		if err != nil {
			c.err = fmt.Errorf("%s.cookie_file: %w", c.section, err)
			return
		}
		if c.cookie = parseCookieFile(b); c.cookie == "" {
			c.err = fmt.Errorf("%s.cookie_file %s: is empty: point it at the .cookie file in openbazaar-go's data directory", c.section, c.files.CookieFile)
		}
	}
}

// parseCookieFile reads openbazaar-go's cookie file: one line,
// "OpenBazaar_Auth_Cookie=<value>". A file holding the bare value works too.
func parseCookieFile(b []byte) string {
	s := strings.TrimSpace(string(b))
	if v, ok := strings.CutPrefix(s, CookieName+"="); ok {
		return strings.TrimSpace(v)
	}
	return s
}
