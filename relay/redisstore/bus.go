package redisstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"courier/relay"
	"courier/wire"
)

// The bus is Redis Pub/Sub on one channel per namespace ("<ns>:bus"). The
// store's scripts PUBLISH their events as they commit, so the channel
// carries them in commit order, and an event is never announced for a
// write that did not commit. Pub/Sub rather than Streams: events are only
// useful to the instances connected right now (a subscriber that was not
// connected reads the store when it replays), so nothing needs to be kept,
// trimmed or acknowledged; one channel rather than one per key, because
// an instance with thousands of subscribers would otherwise hold as many
// subscriptions and churn them on every connect. The cost is that every
// instance hears every event, and that a message rides the channel whole
// (ciphertext included) so that no instance has to read it back.
//
// Pub/Sub delivers at most once: if the subscription breaks (Redis
// restarts or fails over), events may be lost, so the handler is told to
// resync (the relay closes its subscribers with 1012; they replay).
//
// Events, fields separated by "\n":
//
//	M inst key seq id recipient storedAt ciphertext   a new message
//	R inst key seq id recipient storedAt ciphertext   a republish not acked by its recipient
//	A inst id                                         the recipient acked id
//	C inst peer gen                                   a new connection of peer

// Listen implements relay.Bus.
func (s *Store) Listen(ctx context.Context, h relay.BusHandler) error {
	if s.isClosed() {
		return relay.ErrClosed
	}
	ps := s.rdb.Subscribe(ctx, s.channel)
	// The first reply confirms the subscription: events after it reach us.
	if _, err := ps.Receive(ctx); err != nil {
		ps.Close()
		return fmt.Errorf("redisstore: subscribe %s: %w", s.channel, err)
	}
	s.handler.Store(&h)
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel) // the store closes
	// Receive does not return on ctx alone: closing ps ends it.
	unblock := context.AfterFunc(ctx, func() { ps.Close() })
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer stop()
		defer unblock()
		defer cancel()
		defer ps.Close()
		s.listen(ctx, ps, h)
	}()
	return nil
}

func (s *Store) listen(ctx context.Context, ps *redis.PubSub, h relay.BusHandler) {
	broken := false
	wait := 100 * time.Millisecond
	for {
		msg, err := ps.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// go-redis reconnects and subscribes again on the next Receive.
			if !broken {
				broken = true
				s.log.Warn("bus: subscription broken; reconnecting", "err", err)
				h.Resync("the relay lost its link to the other instances")
			}
			select {
			case <-time.After(wait):
				wait = min(2*wait, time.Second)
			case <-ctx.Done():
				return
			}
			continue
		}
		switch m := msg.(type) {
		case *redis.Message:
			s.event(m.Payload, h)
		case *redis.Subscription:
			// Subscribed again after a reconnect: events may have been
			// lost in between, also by subscribers that connected while
			// the link was down.
			if broken {
				s.log.Info("bus: subscription re-established")
			}
			broken, wait = false, 100*time.Millisecond
			h.Resync("the relay's link to the other instances was re-established")
		}
	}
}

// event parses and dispatches one event, unless it is this instance's.
func (s *Store) event(payload string, h relay.BusHandler) {
	b := []byte(payload)
	kind, rest, _ := bytes.Cut(b, []byte{'\n'})
	inst, rest, ok := bytes.Cut(rest, []byte{'\n'})
	if !ok || string(inst) == s.inst {
		return
	}
	switch string(kind) {
	case "M", "R":
		f := make([][]byte, 0, 5)
		for range 5 {
			var x []byte
			x, rest, ok = bytes.Cut(rest, []byte{'\n'})
			if !ok {
				s.log.Warn("bus: malformed event", "kind", string(kind))
				return
			}
			f = append(f, x)
		}
		seq, err1 := strconv.ParseInt(string(f[1]), 10, 64)
		at, err2 := strconv.ParseInt(string(f[4]), 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			s.log.Warn("bus: malformed event", "kind", string(kind), "err", err)
			return
		}
		m := relay.Message{
			Seq: seq, Key: string(f[0]), ID: string(f[2]), Recipient: string(f[3]),
			StoredAt: time.UnixMicro(at), Ciphertext: rest,
		}
		s.keys.add(m.ID, m.Key) // its ack, here, needs no lookup
		h.Stored(m, kind[0] == 'R')
	case "A":
		h.RecipientAcked(string(rest))
	case "C":
		peer, g, _ := bytes.Cut(rest, []byte{'\n'})
		gen, err := strconv.ParseInt(string(g), 10, 64)
		if err != nil {
			return
		}
		h.PeerConnected(string(peer), gen)
	}
}

// presenceKeyOf is the Redis key of peer's presence.
func (s *Store) presenceKeyOf(peer, key string) string { return s.prefix(key) + "o:" + peer }

// PeerConnected implements relay.Bus.
func (s *Store) PeerConnected(ctx context.Context, peer, key string) (int64, error) {
	if s.isClosed() {
		return 0, relay.ErrClosed
	}
	if p, err := wire.ParsePeerID(peer); err == nil {
		key = p.SubscriptionKey(wire.RelayPrefixBits) // where its messages are
	}
	p := s.prefix(key)
	v, err := connectScript.Run(ctx, s.rdb, []string{p + "o:" + peer}, p, peer,
		s.opts.PresenceTTL.Milliseconds(), s.channel, s.inst).Text()
	if err != nil {
		return 0, fmt.Errorf("redisstore: connect %s: %w", peer, err)
	}
	gen, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("redisstore: connect %s: generation %q", peer, v)
	}
	s.pmu.Lock()
	s.presence[presenceKey{peer, key, gen}] = struct{}{}
	s.pmu.Unlock()
	return gen, nil
}

// PeerDisconnected implements relay.Bus.
func (s *Store) PeerDisconnected(peer, key string, gen int64) {
	if p, err := wire.ParsePeerID(peer); err == nil {
		key = p.SubscriptionKey(wire.RelayPrefixBits)
	}
	s.pmu.Lock()
	delete(s.presence, presenceKey{peer, key, gen})
	s.pmu.Unlock()
	if s.isClosed() {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, opTimeout)
	defer cancel()
	err := presenceScript.Run(ctx, s.rdb, []string{s.presenceKeyOf(peer, key)}, gen, 0, "1").Err()
	if err != nil && ctx.Err() == nil {
		s.log.Warn("bus: presence not removed; it expires", "err", err)
	}
}

// refreshPresence renews the presence of this instance's connections every
// third of PresenceTTL. A presence that a newer connection has taken over
// (its announcement lost, or raced with our own connect) makes the handler
// replace ours.
func (s *Store) refreshPresence() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.PresenceTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.pmu.Lock()
		list := make([]presenceKey, 0, len(s.presence))
		for k := range s.presence {
			list = append(list, k)
		}
		s.pmu.Unlock()
		for len(list) > 0 {
			n := min(len(list), 1000)
			s.refresh(list[:n])
			list = list[n:]
		}
	}
}

func (s *Store) refresh(list []presenceKey) {
	ctx, cancel := context.WithTimeout(s.ctx, opTimeout)
	defer cancel()
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(list))
	for i, k := range list {
		cmds[i] = presenceScript.EvalSha(ctx, pipe, []string{s.presenceKeyOf(k.peer, k.key)}, k.gen, s.opts.PresenceTTL.Milliseconds(), "0")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		if redis.HasErrorPrefix(err, "NOSCRIPT") {
			_ = s.loadScripts(ctx)
		}
		if ctx.Err() == nil {
			s.log.Warn("bus: presence refresh failed", "err", err)
		}
		return
	}
	hp := s.handler.Load()
	for i, c := range cmds {
		if v, _ := c.Int64(); v == 0 && hp != nil {
			(*hp).PeerConnected(list[i].peer, list[i].gen+1)
		}
	}
}
