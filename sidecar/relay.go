package sidecar

import (
	"context"
	"time"

	"courier/upstream"
)

// Relay connection states, as /v1/status reports them: upstream's three,
// and disabled when no relay_url is configured.
const (
	RelayDisabled     = "disabled"
	RelayConnecting   = string(upstream.StateConnecting)
	RelayConnected    = string(upstream.StateConnected)
	RelayDisconnected = string(upstream.StateDisconnected)
)

// RelayStatus is the state of the relay connection.
type RelayStatus struct {
	State     string    `json:"state"`
	Since     time.Time `json:"since"`
	LastError string    `json:"last_error,omitempty"`
	PeerID    string    `json:"peer_id,omitempty"`
}

// manageRelay owns the upstream client: it starts one for the configured
// relay_url, and stops and replaces it when a reload changes the URL (or
// relay_host). Reconfigure bumps relayGen and sets the status at once; a
// client reports only under the generation it was started for.
func (e *Engine) manageRelay(ctx context.Context) error {
	var (
		running bool
		gen     uint64
		stop    context.CancelFunc
		done    chan struct{}
	)
	halt := func() {
		if stop == nil {
			return
		}
		e.mu.Lock()
		e.up = nil // no new publishes; those in flight fail with ErrConnectionLost
		e.mu.Unlock()
		stop()
		<-done
		stop, done = nil, nil
	}
	apply := func() {
		e.mu.Lock()
		cfg, g := e.cfg, e.relayGen
		e.mu.Unlock()
		if running && g == gen {
			return
		}
		halt()
		running, gen = true, g
		if cfg.RelayURL == "" {
			e.log.Info("relay disabled: every message goes OFFLINE")
			signal(e.wakeDispatch)
			return
		}
		client, err := upstream.New(upstream.Config{
			URL:           cfg.RelayURL,
			ExpectedHost:  cfg.RelayHost,
			Sign:          e.sign,
			Handle:        e.takeInbound,
			Logger:        e.log.With("component", "upstream"),
			OnStateChange: func(s upstream.Status) { e.onRelayState(g, s) },
			BackoffMax:    e.opts.ReconnectWaitMax, // 0: upstream's default
		})
		if err != nil { // Validate checked the URL; this is a bug, not an input error.
			e.log.Error("cannot start relay client", "err", err)
			return
		}
		e.mu.Lock()
		e.up = client
		e.mu.Unlock()
		var cctx context.Context
		cctx, stop = context.WithCancel(ctx)
		done = make(chan struct{})
		go func() {
			defer close(done)
			_ = client.Run(cctx) // returns nil when cctx is done
		}()
		e.armGraceTimer()
	}
	apply()
	for {
		select {
		case <-ctx.Done():
			halt()
			return ctx.Err()
		case <-e.reconfigured:
			apply()
		}
	}
}

func (e *Engine) sign(ctx context.Context, content string) (upstream.Signature, error) {
	cfg := e.Config().Node
	sig, err := e.node.sign(ctx, cfg, content)
	e.recordNode("sign", err)
	return sig, err
}

// onRelayState takes a status report of the client of generation gen.
func (e *Engine) onRelayState(gen uint64, s upstream.Status) {
	e.mu.Lock()
	if gen != e.relayGen || e.up == nil { // a replaced or stopped client's last words
		e.mu.Unlock()
		return
	}
	wasUp := e.relay.State == RelayConnected
	e.relay = RelayStatus{State: string(s.State), Since: s.Since, LastError: s.LastError, PeerID: s.PeerID}
	if wasUp && s.State != upstream.StateConnected {
		e.relayDownAt = time.Now()
	}
	if !wasUp && s.State == upstream.StateConnected {
		// A first connection is not a comeback: only a connection that
		// comes back after this client had one opens the window in which
		// a queued answer is retried INDIRECT.
		if e.wasUp {
			e.relayBackAt = time.Now()
		}
		e.wasUp = true
	}
	e.mu.Unlock()
	e.m.relayState(string(s.State))
	if s.State == upstream.StateConnected {
		signal(e.wakeDispatch)
	} else if wasUp {
		e.armGraceTimer()
	}
}

func (e *Engine) setRelay(s RelayStatus) {
	e.mu.Lock()
	e.relay = s
	e.mu.Unlock()
	e.m.relayState(s.State)
}

// armGraceTimer wakes the dispatcher when the grace for a relay outage runs
// out, so that waiting messages go OFFLINE on time.
func (e *Engine) armGraceTimer() {
	time.AfterFunc(e.Config().Delivery.RelayGrace+10*time.Millisecond, func() { signal(e.wakeDispatch) })
}

// route says where queued messages go now.
type route int

const (
	routeIndirect route = iota // relay connected
	routeWait                  // relay down, within the grace: keep them queued
	routeOffline               // no relay configured, or down past the grace
)

func (e *Engine) route() (route, *upstream.Client) {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.cfg.RelayURL == "":
		return routeOffline, nil
	case e.up == nil: // just configured; the client is starting
		return routeWait, nil
	case e.relay.State == RelayConnected:
		return routeIndirect, e.up
	case time.Since(e.relayDownAt) < e.cfg.Delivery.RelayGrace:
		return routeWait, nil
	default:
		return routeOffline, nil
	}
}

// relayComeback returns when the relay connection came back from an outage
// (zero if it has not: a first connection is not a comeback). Within
// relay_grace of that, a queued answer may only mean that the recipient's
// sidecar has not reconnected yet (see decide).
func (e *Engine) relayComeback() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.relayBackAt
}

// RelayStatus returns the relay connection's status.
func (e *Engine) RelayStatus() RelayStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.relay
}
