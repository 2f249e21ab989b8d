package localapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"courier/sidecar"
	"courier/sidecar/queue"
	"courier/wire"
)

// bodyLimit is the largest POST /v1/messages body for a ciphertext limit:
// the ciphertext in base64 plus the JSON around it.
func bodyLimit(maxMessageBytes int) int64 {
	return int64(base64.StdEncoding.EncodedLen(maxMessageBytes)) + 4096
}

// bodyBudget caps the bytes of message bodies being read and decoded at
// once, across all requests: a burst of large posts waits its turn (or
// until its client gives up) instead of taking memory without bound. It
// holds at least two bodies of the largest size the config allows.
var bodyBudget = max(64<<20, 2*bodyLimit(sidecar.MaxMessageBytes))

// DefaultBodyTimeout is how long the body of a POST /v1/messages may take
// to arrive, once its headers are in.
const DefaultBodyTimeout = 30 * time.Second

// messageLimit is the largest ciphertext the sidecar accepts: its own
// limit, larger than the relay's (a message the relay cannot take goes
// OFFLINE).
func (s *Server) messageLimit() int { return s.e.MaxMessageBytes() }

type postMessageRequest struct {
	Recipient  *string `json:"recipient"`
	Ciphertext *string `json:"ciphertext"`
}

// messageView is a message as GET /v1/messages/{id} shows it. Attempts
// counts the tries on the message's current path: INDIRECT publishes while
// it goes INDIRECT; once it is on OFFLINE, hand-offs to the node's OFFLINE
// endpoint (the ones delivery.offline_max_attempts bounds). LastError stays
// after a hand-off: why the message went OFFLINE, or the last failed
// hand-off before the one that succeeded.
type messageView struct {
	ID        string    `json:"id"`
	Recipient string    `json:"recipient"`
	State     string    `json:"state"`
	Path      string    `json:"path"`
	Attempts  int       `json:"attempts"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	LastError string    `json:"last_error"`
}

func view(m queue.Outbound) messageView {
	return messageView{
		ID: m.ID, Recipient: m.Recipient, State: string(m.State), Path: string(m.Path),
		Attempts: m.Attempts, CreatedAt: m.CreatedAt, UpdatedAt: m.UpdatedAt, LastError: m.LastError,
	}
}

const postShape = `send {"recipient":"<peer id>","ciphertext":"<standard base64>"}`

func (s *Server) postMessage(w http.ResponseWriter, r *http.Request) {
	limit := s.messageLimit()
	maxBody := bodyLimit(limit)
	tooLarge := func(size string) {
		w.Header().Set("Connection", "close") // do not read the rest
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf(
			"body is over %d bytes%s: the largest ciphertext this sidecar accepts is %d bytes (api.max_message_bytes); "+
				"a message larger than the relay takes is accepted and goes OFFLINE, but nothing over this limit: send it over the node's own path", maxBody, size, limit))
	}
	if r.ContentLength > maxBody {
		tooLarge(fmt.Sprintf(" (it is %d)", r.ContentLength))
		return
	}
	// Reserve the body's bytes from the budget shared by all requests; an
	// unknown length may be as large as allowed.
	weight := r.ContentLength
	if weight < 0 {
		weight = maxBody
	}
	if err := s.bodies.Acquire(r.Context(), weight); err != nil {
		return // the client gave up while waiting
	}
	defer s.bodies.Release(weight)
	// The body must arrive in time: a client that stalls or trickles does
	// not hold its reservation (and a goroutine) for long.
	rc := http.NewResponseController(w)
	timeout := s.BodyTimeout
	if timeout <= 0 {
		timeout = DefaultBodyTimeout
	}
	_ = rc.SetReadDeadline(time.Now().Add(timeout)) // unsupported only by test recorders
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	_ = rc.SetReadDeadline(time.Time{})
	if err != nil {
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			tooLarge("")
		case errors.Is(err, os.ErrDeadlineExceeded):
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusRequestTimeout, fmt.Sprintf("body: not received within %s of the headers; send the whole body at once", timeout))
		default:
			writeError(w, http.StatusBadRequest, "reading body: "+err.Error())
		}
		return
	}
	var req postMessageRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "body: "+jsonProblem(err)+"; "+postShape)
		return
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, "body: more than one JSON value; "+postShape)
		return
	}
	switch {
	case req.Recipient == nil:
		writeError(w, http.StatusBadRequest, "recipient: missing; "+postShape)
		return
	case *req.Recipient == "":
		writeError(w, http.StatusBadRequest, "recipient: empty; "+postShape)
		return
	case req.Ciphertext == nil:
		writeError(w, http.StatusBadRequest, "ciphertext: missing; "+postShape)
		return
	case *req.Ciphertext == "":
		writeError(w, http.StatusBadRequest, "ciphertext: empty: a message has at least one byte; "+postShape)
		return
	}
	ct, err := base64.StdEncoding.DecodeString(*req.Ciphertext)
	if err != nil {
		writeError(w, http.StatusBadRequest, "ciphertext: not standard padded base64 ("+err.Error()+")")
		return
	}
	m, created, err := s.e.Submit(r.Context(), *req.Recipient, ct)
	if err != nil {
		status := errorStatus(err)
		if status == http.StatusInternalServerError {
			s.log.Error("accept message", "err", err)
			writeError(w, status, "could not store the message; it was NOT accepted, retry later: "+err.Error())
			return
		}
		writeError(w, status, err.Error())
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusAccepted
	}
	writeJSON(w, status, map[string]string{"id": m.ID, "state": string(m.State)})
}

func jsonProblem(err error) string {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te) && te.Field == "":
		return "must be a JSON object, not " + te.Value
	case errors.As(err, &te):
		return fmt.Sprintf("%s must be a %s, not %s", te.Field, te.Type, te.Value)
	case errors.As(err, &se):
		return "invalid JSON (" + se.Error() + ")"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "invalid JSON (it ends too early)"
	case errors.Is(err, io.EOF):
		return "empty"
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return strings.TrimPrefix(err.Error(), "json: ")
	default:
		return err.Error()
	}
}

func (s *Server) getMessage(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !wire.ValidMessageID(id) {
		writeError(w, http.StatusBadRequest, "id: not a message ID (64 lowercase hex characters, as POST /v1/messages returned it)")
		return
	}
	m, err := s.e.Message(r.Context(), id)
	if err != nil {
		if errorStatus(err) == http.StatusNotFound {
			writeError(w, http.StatusNotFound, "no message with id "+id)
			return
		}
		s.log.Error("get message", "id", id, "err", err)
		writeError(w, http.StatusInternalServerError, "reading the message failed: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, view(m))
}

// maxWait bounds a long poll below common proxy and client timeouts.
const maxWait = 60 * time.Second

type inboxMessage struct {
	ID         string    `json:"id"`
	Ciphertext []byte    `json:"ciphertext"`
	Path       string    `json:"path"`
	ReceivedAt time.Time `json:"received_at"`
}

func (s *Server) getInbox(w http.ResponseWriter, r *http.Request) {
	var wait time.Duration
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > maxWait {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("wait: %q is not a duration between 0s and %s (e.g. wait=30s)", v, maxWait))
			return
		}
		wait = d
	}
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit: %q is not a number from 1 to 1000", v))
			return
		}
		limit = n
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(s.polls, cancel)()
	if wait > 0 {
		s.waiting.Add(1)
		defer s.waiting.Add(-1)
	}
	msgs, err := s.e.Inbox(ctx, wait, limit)
	if err != nil {
		if r.Context().Err() != nil {
			return // the node hung up
		}
		if s.polls.Err() != nil {
			writeError(w, http.StatusServiceUnavailable, "courier is shutting down; poll again once it is back")
			return
		}
		s.log.Error("read inbox", "err", err)
		writeError(w, http.StatusInternalServerError, "reading the inbox failed: "+err.Error())
		return
	}
	out := make([]inboxMessage, len(msgs))
	for i, m := range msgs {
		out[i] = inboxMessage{ID: m.ID, Ciphertext: m.Ciphertext, Path: "INDIRECT", ReceivedAt: m.ReceivedAt}
	}
	writeJSON(w, http.StatusOK, map[string]any{"messages": out})
}

func (s *Server) ackInbox(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !wire.ValidMessageID(id) {
		writeError(w, http.StatusBadRequest, "id: not a message ID (64 lowercase hex characters, as GET /v1/inbox listed it)")
		return
	}
	if err := s.e.AckInbox(r.Context(), id); err != nil {
		if errorStatus(err) == http.StatusNotFound {
			writeError(w, http.StatusNotFound, "no inbound message with id "+id)
			return
		}
		s.log.Error("ack inbox", "id", id, "err", err)
		writeError(w, http.StatusInternalServerError, "recording the ack failed: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "acked": true})
}
