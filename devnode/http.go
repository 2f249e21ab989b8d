package devnode

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"courier/wire"
)

// MaxWait bounds the wait= of the control API's long polls and sends.
const MaxWait = 2 * time.Minute

// Handler serves the node's endpoints and the control API:
//
//	POST /ob/signmessage     {"content"} → {"signature","pubkey","peerId"}
//	POST /courier/offline    {"recipient","ciphertext"} → 200 {"id","count"}; with an
//	                         OFFLINE store, into the store first (503 if it cannot)
//	POST /courier/inbound    {"id","ciphertext","path","received_at"} → 200 {"id","count"}
//	GET  /devnode/id         → {"peer_id","identity_peer_id","pubkey"}
//	POST /devnode/sidecar    {"url"} → points the node at its sidecar
//	POST /devnode/send       {"to_peer","to_pubkey","text","subject","wait"} → the sidecar's state
//	GET  /devnode/received   ?min=N&wait=5s → {"messages":[…]}
//	GET  /devnode/offline    ?min=N&wait=5s → {"messages":[…]}
//	GET  /devnode/offline-poll → what the OFFLINE polls did (OfflinePollStats)
//	POST /devnode/offline-poll → poll the OFFLINE store now: {"taken":N,"stats":{…}}
//	POST /devnode/fail       {"endpoint","count","status","retry_after"} → {"faults":{…}}
//	GET  /devnode/fail       → {"faults":{…}}
//	GET  /devnode/stats      → {"inbound":{…},"offline":{…},"sign":{…}}
//	POST /devnode/reset      → 204
//
// Every error is a JSON body {"error": "…"}.
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /ob/signmessage", n.serveSign)
	mux.HandleFunc("POST /courier/offline", n.serveOffline)
	mux.HandleFunc("POST /courier/inbound", n.serveInbound)
	mux.HandleFunc("GET /devnode/id", n.serveID)
	mux.HandleFunc("POST /devnode/send", n.serveSend)
	mux.HandleFunc("POST /devnode/sidecar", n.serveSetSidecar)
	mux.HandleFunc("GET /devnode/received", n.serveReceived)
	mux.HandleFunc("GET /devnode/offline", n.serveOfflineList)
	mux.HandleFunc("GET /devnode/offline-poll", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, n.PollStats())
	})
	mux.HandleFunc("POST /devnode/offline-poll", n.servePollOffline)
	mux.HandleFunc("POST /devnode/fail", n.serveFail)
	mux.HandleFunc("GET /devnode/fail", n.serveFaults)
	mux.HandleFunc("GET /devnode/stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, n.Stats())
	})
	mux.HandleFunc("POST /devnode/reset", func(w http.ResponseWriter, r *http.Request) {
		n.Reset()
		n.log.Info("reset")
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no route %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away: nothing to do
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// decode reads a JSON body of at most the node's limit into v. strict
// refuses unknown fields (the control API, to catch typos in tests); the
// node endpoints accept them, as a sidecar may send more than they need.
func (n *Node) decode(w http.ResponseWriter, r *http.Request, v any, strict bool) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, n.maxBody))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fmt.Errorf("request body is over %d bytes", mbe.Limit)
		}
		return fmt.Errorf("request body is not the expected JSON: %w", err)
	}
	return nil
}

// injected answers the request from a fault in force, if any, and reports
// whether it did.
func (n *Node) injected(w http.ResponseWriter, endpoint string) bool {
	f, ok := n.takeFault(endpoint)
	if !ok {
		return false
	}
	if f.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(f.RetryAfter))
	}
	n.log.Info("injected failure", "endpoint", endpoint, "status", f.Status)
	writeError(w, f.Status, "devnode: injected failure of the "+endpoint+" endpoint")
	return true
}

// answer writes a node endpoint's result and counts it.
func (n *Node) answer(w http.ResponseWriter, endpoint string, status int, v any) {
	n.countResult(endpoint, status)
	if status >= 400 {
		n.log.Warn("refused", "endpoint", endpoint, "status", status, "err", v)
		writeError(w, status, fmt.Sprint(v))
		return
	}
	writeJSON(w, status, v)
}

func (n *Node) serveSign(w http.ResponseWriter, r *http.Request) {
	if n.injected(w, EndpointSign) {
		return
	}
	var req struct {
		Content string `json:"content"`
	}
	if err := n.decode(w, r, &req, false); err != nil {
		n.answer(w, EndpointSign, http.StatusBadRequest, err)
		return
	}
	n.log.Info("signed", "endpoint", EndpointSign, "bytes", len(req.Content))
	// The shape of openbazaar-go's answer, field for field.
	n.answer(w, EndpointSign, http.StatusOK, struct {
		Signature string `json:"signature"`
		PubKey    string `json:"pubkey"`
		PeerID    string `json:"peerId"`
	}{hex.EncodeToString(n.Sign([]byte(req.Content))), n.PubKeyHex(), n.peerID})
}

type countAnswer struct {
	ID    string `json:"id"`
	Count int    `json:"count"`
}

func (n *Node) serveOffline(w http.ResponseWriter, r *http.Request) {
	if n.injected(w, EndpointOffline) {
		return
	}
	var req struct {
		Recipient  string `json:"recipient"`
		Ciphertext string `json:"ciphertext"`
	}
	if err := n.decode(w, r, &req, false); err != nil {
		n.answer(w, EndpointOffline, http.StatusBadRequest, err)
		return
	}
	if _, err := wire.ParsePeerID(req.Recipient); err != nil {
		n.answer(w, EndpointOffline, http.StatusBadRequest, fmt.Errorf("recipient: %w", err))
		return
	}
	ct, err := wire.DecodeCiphertext(req.Ciphertext, 0)
	if err != nil {
		n.answer(w, EndpointOffline, http.StatusBadRequest, fmt.Errorf("ciphertext: %w", err))
		return
	}
	if n.store != nil {
		// Onto the (simulated) OFFLINE network before answering 2xx: that
		// answer means the node has taken it onto its OFFLINE path.
		if _, err := n.store.Publish(req.Recipient, ct); err != nil {
			n.answer(w, EndpointOffline, http.StatusServiceUnavailable, fmt.Errorf("cannot publish OFFLINE: %w", err))
			return
		}
	}
	o := n.HandOff(req.Recipient, ct)
	n.log.Info("handed off", "endpoint", EndpointOffline, "id", o.ID, "recipient", o.Recipient, "count", o.Count)
	n.answer(w, EndpointOffline, http.StatusOK, countAnswer{o.ID, o.Count})
}

func (n *Node) serveInbound(w http.ResponseWriter, r *http.Request) {
	if n.injected(w, EndpointInbound) {
		return
	}
	var req struct {
		ID         string          `json:"id"`
		Ciphertext string          `json:"ciphertext"`
		Path       string          `json:"path"`
		ReceivedAt json.RawMessage `json:"received_at"`
	}
	if err := n.decode(w, r, &req, false); err != nil {
		n.answer(w, EndpointInbound, http.StatusBadRequest, err)
		return
	}
	ct, err := wire.DecodeCiphertext(req.Ciphertext, 0)
	if err != nil {
		n.answer(w, EndpointInbound, http.StatusBadRequest, fmt.Errorf("ciphertext: %w", err))
		return
	}
	// received_at is kept as sent: a string, or the JSON text of anything else.
	receivedAt := string(req.ReceivedAt)
	if s, err := strconv.Unquote(receivedAt); err == nil {
		receivedAt = s
	}
	rec, err := n.Deliver(req.ID, ct, req.Path, receivedAt)
	switch {
	case errors.Is(err, ErrDecrypt), errors.Is(err, ErrMalformed), errors.Is(err, ErrSignature):
		n.answer(w, EndpointInbound, http.StatusUnprocessableEntity, err)
		return
	case err != nil:
		n.answer(w, EndpointInbound, http.StatusBadRequest, err)
		return
	}
	n.log.Info("received", "endpoint", EndpointInbound, "id", rec.ID, "sender", rec.Sender,
		"type", rec.TypeName, "path", req.Path, "count", rec.Count)
	n.answer(w, EndpointInbound, http.StatusOK, countAnswer{rec.ID, rec.Count})
}

func (n *Node) serveID(w http.ResponseWriter, r *http.Request) {
	ident, _ := wire.IdentityPeerID(n.pubKey) // our own key always makes one
	writeJSON(w, http.StatusOK, map[string]string{
		"peer_id":          n.peerID,
		"identity_peer_id": ident.String(),
		"pubkey":           n.PubKeyHex(),
	})
}

// parseWait reads a wait= duration (or a JSON string), capped at MaxWait.
func parseWait(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("wait %q: want a duration such as 5s", s)
	}
	return min(d, MaxWait), nil
}

func (n *Node) serveSend(w http.ResponseWriter, r *http.Request) {
	var req struct {
		SendRequest
		Wait string `json:"wait"`
	}
	if err := n.decode(w, r, &req, true); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	wait, err := parseWait(req.Wait)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if _, err := ParseRecipient(req.ToPeer, req.ToPubKey); err != nil {
		writeError(w, http.StatusBadRequest, "recipient: "+err.Error())
		return
	}
	res, err := n.Send(r.Context(), req.SendRequest)
	switch {
	case errors.Is(err, ErrNoSidecar):
		writeError(w, http.StatusServiceUnavailable, "devnode was started without a sidecar URL (-sidecar)")
		return
	case err != nil: // the sidecar refused or could not be reached
		writeError(w, http.StatusBadGateway, err.Error())
		return
	}
	out := struct {
		SendResult
		SidecarStatus int  `json:"sidecar_status"`
		Final         bool `json:"final"`
	}{res, res.HTTPStatus, res.Final()}
	if wait > 0 && !res.Final() {
		ctx, cancel := context.WithTimeout(r.Context(), wait)
		s, err := n.WaitState(ctx, res.ID)
		cancel()
		if s.ID != "" {
			out.MessageState = s
		}
		out.Final = s.Final()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			writeError(w, http.StatusBadGateway, fmt.Sprintf("message %s sent, then: %v", res.ID, err))
			return
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// serveSetSidecar points the node at its sidecar: {"url":"http://host:port"}.
func (n *Node) serveSetSidecar(w http.ResponseWriter, r *http.Request) {
	var req struct {
		URL string `json:"url"`
	}
	if err := n.decode(w, r, &req, true); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := n.SetSidecarURL(req.URL); err != nil {
		writeError(w, http.StatusBadRequest, "url: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"sidecar": req.URL})
}

// longPoll reads ?min=N&wait=D and returns a context that ends after D.
func longPoll(r *http.Request) (context.Context, context.CancelFunc, int, error) {
	q := r.URL.Query()
	minCount := 0
	if s := q.Get("min"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 {
			return nil, nil, 0, fmt.Errorf("min %q: want a count", s)
		}
		minCount = v
	}
	wait, err := parseWait(q.Get("wait"))
	if err != nil {
		return nil, nil, 0, err
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	return ctx, cancel, minCount, nil
}

func (n *Node) serveReceived(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, minCount, err := longPoll(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	defer cancel()
	msgs, _ := n.WaitReceived(ctx, minCount) // on timeout: what there is
	writeJSON(w, http.StatusOK, map[string]any{"messages": msgs})
}

func (n *Node) serveOfflineList(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, minCount, err := longPoll(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	defer cancel()
	msgs, _ := n.WaitOffline(ctx, minCount)
	writeJSON(w, http.StatusOK, map[string]any{"messages": msgs})
}

func (n *Node) serveFail(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Endpoint   string `json:"endpoint"`
		Count      *int   `json:"count"` // absent: until cleared; 0: clear
		Status     int    `json:"status"`
		RetryAfter int    `json:"retry_after"`
	}
	if err := n.decode(w, r, &req, true); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	f := Fault{Status: req.Status, Remaining: -1, RetryAfter: req.RetryAfter}
	if req.Count != nil {
		if *req.Count < 0 {
			writeError(w, http.StatusBadRequest, "count: want 0 (recover) or more; leave it out to fail until cleared")
			return
		}
		f.Remaining = *req.Count
	}
	if err := n.SetFault(strings.TrimSpace(req.Endpoint), f); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	n.log.Info("fault set", "endpoint", req.Endpoint, "status", f.Status, "remaining", f.Remaining)
	n.serveFaults(w, r)
}

func (n *Node) serveFaults(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"faults": n.Faults()})
}

func (n *Node) servePollOffline(w http.ResponseWriter, r *http.Request) {
	taken, err := n.PollOffline()
	switch {
	case errors.Is(err, ErrNoOfflineStore):
		writeError(w, http.StatusConflict, "devnode was started without an OFFLINE store (-offline-dir)")
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"taken": taken, "stats": n.PollStats()})
}
