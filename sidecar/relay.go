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
// relay_url, and stops and replaces it when a reload changes the URL.
func (e *Engine) manageRelay(ctx context.Context) error {
	var (
		current string
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
		url := e.Config().RelayURL
		if url == current && (url == "" || stop != nil) {
			return
		}
		halt()
		current = url
		if url == "" {
			e.setRelay(RelayStatus{State: RelayDisabled, Since: time.Now()})
			e.log.Info("relay disabled: every message goes OFFLINE")
			signal(e.wakeDispatch)
			return
		}
		client, err := upstream.New(upstream.Config{
			URL:           url,
			Sign:          e.sign,
			Handle:        e.takeInbound,
			Logger:        e.log.With("component", "upstream"),
			OnStateChange: e.onRelayState,
			BackoffMax:    e.opts.ReconnectWaitMax, // 0: upstream's default
		})
		if err != nil { // Validate checked the URL; this is a bug, not an input error.
			e.log.Error("cannot start relay client", "err", err)
			return
		}
		e.mu.Lock()
		e.up = client
		e.relayDownAt = time.Now()
		e.relayBackAt, e.wasUp = time.Time{}, false // a new relay: its first connection is no comeback
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
	sig, err := e.node.sign(ctx, e.Config().Node.SignURL, content)
	e.recordNode("sign", err)
	return sig, err
}

func (e *Engine) onRelayState(s upstream.Status) {
	e.mu.Lock()
	if e.up == nil { // a stopped client's last words
		e.mu.Unlock()
		return
	}
	wasUp := e.relay.State == RelayConnected
	e.relay = RelayStatus{State: string(s.State), Since: s.Since, LastError: s.LastError, PeerID: s.PeerID}
	if wasUp && s.State != upstream.StateConnected {
		e.relayDownAt = time.Now()
	}
	if !wasUp && s.State == upstream.StateConnected {
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

// reconnectRetry is how soon a message answered queued just after the relay
// came back is published again (see relayJustBack): about the relay's
// restart jitter, within which the other sidecars reconnect.
const reconnectRetry = 500 * time.Millisecond

// relayJustBack reports whether the relay connection came back from an
// outage less than relay_grace ago, and until when that holds. Meanwhile a
// queued answer may only mean that the recipient's sidecar has not
// reconnected yet: the relay restarted under both, and this side was
// quicker. Within that window the grace the operator gave the relay covers
// the recipient's return too.
func (e *Engine) relayJustBack() (until time.Time, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.relayBackAt.IsZero() {
		return time.Time{}, false
	}
	until = e.relayBackAt.Add(e.cfg.Delivery.RelayGrace)
	return until, time.Now().Before(until)
}

// RelayStatus returns the relay connection's status.
func (e *Engine) RelayStatus() RelayStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.relay
}
