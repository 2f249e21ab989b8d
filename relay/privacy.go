package relay

import (
	"bytes"
	"io"
	"log/slog"
	"regexp"
)

// LogConfig is the [log] section.
type LogConfig struct {
	// ClientDetails logs, at info, each connection's client address, and
	// each subscription's peer ID and subscription key. Off (the
	// default), no log line carries them, at any level: the relay's logs
	// do not record who was online, from where, or who wrote to whom. Turn
	// it on for debugging only.
	ClientDetails bool `toml:"client_details"`
}

// logClient logs a connection event. The details (client address, peer
// ID, subscription key) go through here and nowhere else: with
// log.client_details on the event is logged at info with them; off, at
// debug without them.
func (s *Server) logClient(l *slog.Logger, msg string, details []any, attrs ...any) {
	if s.cfg.Log.ClientDetails {
		l.Info(msg, append(attrs, details...)...)
		return
	}
	l.Debug(msg, attrs...)
}

// addrRE matches an IPv4 or bracketed IPv6 address with its port, as
// net/http writes a client's address into its error log ("http: TLS
// handshake error from 192.0.2.1:50312: …").
var addrRE = regexp.MustCompile(`(\d{1,3}(\.\d{1,3}){3}|\[[0-9A-Fa-f:.%a-zA-Z]+\]):\d+`)

// RedactingWriter passes log lines to w with client addresses replaced by
// "[client]", unless details is true: for an http.Server's ErrorLog, whose
// lines name the client.
func RedactingWriter(w io.Writer, details bool) io.Writer {
	if details {
		return w
	}
	return redactor{w}
}

type redactor struct{ w io.Writer }

func (r redactor) Write(p []byte) (int, error) {
	if _, err := r.w.Write(addrRE.ReplaceAll(bytes.Clone(p), []byte("[client]"))); err != nil {
		return 0, err
	}
	return len(p), nil
}
