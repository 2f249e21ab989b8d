// Package localapi is the sidecar's HTTP API for the node on the same
// machine: POST a message, follow its state, pull inbound messages, and the
// health, status and metrics endpoints an operator looks at.
//
// Every answer is JSON (but GET /, a small human status page); every error
// is {"error": "<what is wrong, and what to do>"}. localapi only translates
// HTTP to calls on the sidecar's Engine; it decides nothing itself.
package localapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/semaphore"

	"courier/sidecar"
)

// Server answers the local API for one Engine.
type Server struct {
	e     *sidecar.Engine
	token string
	log   *slog.Logger
	mux   *http.ServeMux

	polls    context.Context // ends at EndLongPolls
	endPolls context.CancelFunc
	bodies   *semaphore.Weighted // bodyBudget
	waiting  atomic.Int64        // long polls of the inbox in progress

	// BodyTimeout bounds how long the body of a POST /v1/messages may take
	// to arrive once its headers are in; zero means DefaultBodyTimeout.
	// Set it before serving.
	BodyTimeout time.Duration
}

// New returns the API for e. A non-empty token is required as
// "Authorization: Bearer <token>" on every endpoint but /healthz. Without a
// token (the API listens on loopback only: the config requires a token
// otherwise), requests must be addressed to a loopback host.
func New(e *sidecar.Engine, token string, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{e: e, token: token, log: logger, mux: http.NewServeMux(), bodies: semaphore.NewWeighted(bodyBudget)}
	s.polls, s.endPolls = context.WithCancel(context.Background())
	s.mux.HandleFunc("POST /v1/messages", s.postMessage)
	s.mux.HandleFunc("GET /v1/messages/{id}", s.getMessage)
	s.mux.HandleFunc("GET /v1/inbox", s.getInbox)
	s.mux.HandleFunc("POST /v1/inbox/{id}/ack", s.ackInbox)
	s.mux.HandleFunc("GET /v1/status", s.getStatus)
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(e.Gatherer(), promhttp.HandlerOpts{}))
	s.mux.HandleFunc("GET /{$}", s.statusPage)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path+"; see PROTOCOL.md, \"Sidecar local API\"")
	})
	return s
}

// EndLongPolls answers the long polls waiting in GET /v1/inbox (503) and
// every later one at once, so that a shutdown need not wait for them: call
// it when the HTTP server's shutdown begins (http.Server.RegisterOnShutdown).
func (s *Server) EndLongPolls() { s.endPolls() }

// ServeHTTP checks who is asking, then routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// A web page in the operator's browser must not be able to drive the
	// API: browsers send Origin on cross-origin requests, the node does
	// not. The whole origin counts: scheme, host and port.
	if o := r.Header.Get("Origin"); o != "" && !sameOrigin(o, r) {
		writeError(w, http.StatusForbidden, fmt.Sprintf("Origin %q is not this API's own origin (scheme, host and port): cross-origin requests are refused; call the API from the node, not from a web page", o))
		return
	}
	// Nor through DNS rebinding: a page whose host name has been pointed
	// at 127.0.0.1 is "same origin" with itself, but its requests carry
	// its own host name. Without a token, only loopback names are served.
	if s.token == "" && !loopbackHost(r.Host) {
		writeError(w, http.StatusForbidden, fmt.Sprintf("Host %q is not a loopback address: without api.token this API answers only requests to 127.0.0.1, [::1] or localhost", r.Host))
		return
	}
	if s.token != "" && r.URL.Path != "/healthz" && !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="courier"`)
		writeError(w, http.StatusUnauthorized, "missing or wrong bearer token; send \"Authorization: Bearer <api.token>\"")
		return
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) authorized(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(s.token)) == 1
}

// sameOrigin reports whether a request's Origin header names the API
// itself: the same scheme, host and port as the request was sent to (a
// page on another loopback port is another origin). Default ports count
// as given; an Origin with anything beyond scheme://host[:port] is not
// this API's.
func sameOrigin(origin string, r *http.Request) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return false
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if !strings.EqualFold(u.Scheme, scheme) {
		return false
	}
	oh, op := splitHostPort(u.Host, scheme)
	rh, rp := splitHostPort(r.Host, scheme)
	return oh != "" && strings.EqualFold(oh, rh) && op == rp
}

// splitHostPort splits "host[:port]", filling in the scheme's default port.
func splitHostPort(hostport, scheme string) (host, port string) {
	h, p, err := net.SplitHostPort(hostport)
	if err != nil {
		h, p = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), ""
	}
	if p == "" {
		p = map[string]string{"http": "80", "https": "443"}[scheme]
	}
	return h, p
}

// loopbackHost reports whether a Host header names the loopback
// interface: localhost, or a loopback IP address, with or without a port.
func loopbackHost(host string) bool {
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	}
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the client may have gone; nothing to do about it
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// errorStatus maps an engine error to its HTTP status, once, at the edge.
func errorStatus(err error) int {
	switch {
	case errors.Is(err, sidecar.ErrInvalidInput):
		return http.StatusBadRequest
	case errors.Is(err, sidecar.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, sidecar.ErrNotFound):
		return http.StatusNotFound
	default:
		return http.StatusInternalServerError
	}
}
