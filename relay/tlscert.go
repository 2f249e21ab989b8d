package relay

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// CertReloader serves the certificate of tls.cert_file / tls.key_file and
// picks up a renewed pair on disk without a restart: its GetCertificate
// looks at the files' modification time and size at most once per
// interval, loads the pair again when either changed, and keeps serving
// the last good pair (and logs why) when the new one does not load, for
// instance while a renewal has written the certificate but not yet the
// key. Connections already open are not touched: only new handshakes see
// the new certificate.
type CertReloader struct {
	certFile, keyFile string
	interval          time.Duration
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   [2]fileStamp // of the files the current pair, or the last failed attempt, was read from
	checked time.Time
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// NewCertReloader loads the pair once (an error names the keys) and
// returns a reloader that checks the files at most once per interval
// (5s when interval <= 0).
func NewCertReloader(certFile, keyFile string, interval time.Duration, logger *slog.Logger) (*CertReloader, error) {
	if interval <= 0 {
		interval = 5 * time.Second
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &CertReloader{certFile: certFile, keyFile: keyFile, interval: interval, log: logger}
	stamp, _ := r.stat()
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls.cert_file / tls.key_file: cannot load the pair %s, %s: %w", certFile, keyFile, err)
	}
	r.cert, r.stamp, r.checked = &cert, stamp, time.Now()
	return r, nil
}

func (r *CertReloader) stat() ([2]fileStamp, error) {
	var s [2]fileStamp
	for i, p := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(p)
		if err != nil {
			return s, err
		}
		s[i] = fileStamp{fi.ModTime(), fi.Size()}
	}
	return s, nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (r *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) < r.interval {
		return r.cert, nil
	}
	r.checked = time.Now()
	stamp, err := r.stat()
	if err != nil {
		r.log.Warn("tls: cannot read the certificate files; serving the last good certificate", "cert_file", r.certFile, "key_file", r.keyFile, "err", err)
		return r.cert, nil
	}
	if stamp == r.stamp {
		return r.cert, nil
	}
	r.stamp = stamp // a failed pair is tried again only once the files change again
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		r.log.Warn("tls: the changed certificate does not load; serving the last good certificate", "cert_file", r.certFile, "key_file", r.keyFile, "err", err)
		return r.cert, nil
	}
	r.cert = &cert
	r.log.Info("tls: loaded a renewed certificate", "cert_file", r.certFile)
	return r.cert, nil
}

// TLSConfig is a server tls.Config that serves the reloader's certificate
// over HTTP/1.1 only (a WebSocket upgrade needs HTTP/1.1).
func (r *CertReloader) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.GetCertificate,
		NextProtos:     []string{"http/1.1"},
	}
}
