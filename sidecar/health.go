package sidecar

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// EndpointHealth is how one of the node's endpoints has been answering.
type EndpointHealth struct {
	LastOK              time.Time `json:"last_ok,omitzero"`
	LastError           string    `json:"last_error,omitempty"`
	LastErrorAt         time.Time `json:"last_error_at,omitzero"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
}

// unhealthyAfter is how many failures in a row make an endpoint unhealthy.
const unhealthyAfter = 3

// nodeHealth is the engine's part that tracks the node's endpoints ("sign",
// "offline", "inbound"), each call's outcome recorded by its caller. It has
// its own lock.
type nodeHealth struct {
	mu sync.Mutex
	m  map[string]*EndpointHealth
}

// record takes one call's outcome: nil is an answer the endpoint meant
// (2xx, or an inbound refusal), an error a failure. A call cancelled by a
// shutdown counts as neither.
func (h *nodeHealth) record(endpoint string, err error) {
	if err != nil && errors.Is(err, context.Canceled) {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		h.m = make(map[string]*EndpointHealth)
	}
	e := h.m[endpoint]
	if e == nil {
		e = new(EndpointHealth)
		h.m[endpoint] = e
	}
	if err == nil {
		e.LastOK, e.ConsecutiveFailures = time.Now(), 0
		return
	}
	e.LastError, e.LastErrorAt = err.Error(), time.Now()
	e.ConsecutiveFailures++
}

func (h *nodeHealth) snapshot() map[string]EndpointHealth {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]EndpointHealth, len(h.m))
	for k, e := range h.m {
		out[k] = *e
	}
	return out
}

// failing says which endpoint keeps failing (unhealthyAfter in a row), or
// nil.
func (h *nodeHealth) failing() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, name := range []string{"sign", "offline", "inbound"} {
		if e := h.m[name]; e != nil && e.ConsecutiveFailures >= unhealthyAfter {
			return fmt.Errorf("node %s endpoint: %d failures in a row, last: %s", name, e.ConsecutiveFailures, e.LastError)
		}
	}
	return nil
}

// NodeHealth returns how each of the node's endpoints ("sign", "offline",
// "inbound") has been answering; an endpoint not called yet is missing.
// Ready reports an endpoint failing unhealthyAfter times in a row.
func (e *Engine) NodeHealth() map[string]EndpointHealth { return e.health.snapshot() }
