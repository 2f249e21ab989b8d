// Package redisstore is the relay's message store (relay.Store) and the
// link between relay instances (relay.Bus) on Redis 7 or Valkey, so that
// several courier-relay processes behave as one relay (PROTOCOL.md, "One
// relay, several instances").
//
// Layout: everything stored for one subscription key lives under keys
// tagged {<subscription key>} (see scripts.go), so one key's data is in one
// hash slot. A batch's puts to one key, each with its idempotency,
// recipient and quota checks, are one Lua script, atomic in Redis; so are
// its acks of one key and each sweep step. Seq comes from the key's
// counter, read and advanced inside the put script: it increases per
// subscription key in commit order and is never reused. The relay compares Seqs only
// within one key (a replay reads one key; the hub's in-flight list is by
// key and Seq), so a per-key Seq is all it needs.
//
// Besides the per-key data there are three global entries, each written
// by a command of its own (never inside a per-key script): the index from
// message ID to subscription key (acks carry only the ID; a put of a
// stored ID for another key is refused), the expiry index (a sorted set of
// subscription keys by the oldest time stored under them, which Sweep
// walks in batches instead of scanning every message), and the running
// totals behind Stats. The totals count a batch's puts in the scripts'
// pipeline and take back, before any result is sent, those that stored
// nothing; an instance killed in between leaves them high by those, so
// Stats (and /readyz's counts) are exact only while no instance crashes.
// The expiry index is written before the put (by the relay's clock), so a
// key is never missing from it; an entry older than the key's oldest
// message only makes a sweep look at the key early.
//
// Writes go through one writer goroutine, in call order: it takes what is
// queued (up to Options.MaxBatch writes), looks up the message IDs in one
// pipeline (an ack of an ID whose key the instance remembers skips it),
// runs the scripts in a second one (EVALSHA; one per key and kind of
// write, see groupScripts), and only then calls early and sends the
// results. A result is as durable as Redis makes it:
// with appendonly yes and appendfsync always, Redis answers after its fsync.
package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"courier/relay"
)

// Options configures a Store.
type Options struct {
	// Quota bounds, per subscription key, what its recipients have not acked.
	Quota relay.Quota
	// Namespace prefixes every Redis key and the bus channel. Default
	// "courier". Relays that share it are one relay.
	Namespace string
	// MaxBatch is the most writes in one pipeline. Default 512.
	MaxBatch int
	// PresenceTTL is how long a peer counts as connected after its
	// instance last confirmed it (a killed instance's peers expire after
	// it). Default 60s; refreshed every third of it.
	PresenceTTL time.Duration
	// KeyCache is how many message IDs the store remembers the subscription
	// key of (from its own puts and the other instances' bus events), so
	// that an ack of a recent message needs no lookup of the ID index: one
	// round trip to Redis instead of two. Default 32768 (a few MiB).
	KeyCache int
	// OnCommit, if set, is called from the writer after each batch, before
	// its results are sent, with its size and how long it took.
	OnCommit func(batch int, d time.Duration)
	// Logger receives the store's own events. Default slog.Default().
	Logger *slog.Logger
}

const (
	defaultMaxBatch    = 512
	defaultKeyCache    = 1 << 15
	defaultPresenceTTL = 60 * time.Second
	sweepKeys          = 100 // subscription keys per expiry-index read
	sweepChunk         = 256 // messages per sweep script
	opTimeout          = 10 * time.Second
)

// Store is a relay.Store and relay.Bus on Redis. Create it with Open.
type Store struct {
	rdb  redis.UniversalClient
	opts Options
	log  *slog.Logger
	inst string // this instance's random ID, to skip its own bus events

	expiryKey, totalsKey, channel string
	handoffKey, handoffOwnerKey   string // see handoff.go

	mu     sync.RWMutex // closed, and sends on ops
	closed bool
	ops    chan *op
	done   chan struct{} // the writer has ended

	ctx    context.Context // ends at Close, after the writer
	cancel context.CancelFunc
	wg     sync.WaitGroup // the bus listener and the presence refresher

	keys keyCache // message ID -> subscription key, recent ones

	handler  atomic.Pointer[relay.BusHandler]
	pmu      sync.Mutex
	presence map[presenceKey]struct{} // local connections' presence, refreshed

}

type presenceKey struct {
	peer, key string
	gen       int64
}

// Open connects with a client built by NewClient (or any go-redis client),
// checks that Redis answers and loads the scripts. The Store owns rdb and
// closes it at Close.
func Open(ctx context.Context, rdb redis.UniversalClient, opts Options) (*Store, error) {
	if opts.Namespace == "" {
		opts.Namespace = "courier"
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = defaultMaxBatch
	}
	if opts.KeyCache <= 0 {
		opts.KeyCache = defaultKeyCache
	}
	if opts.PresenceTTL <= 0 {
		opts.PresenceTTL = defaultPresenceTTL
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	s := &Store{
		rdb:       rdb,
		opts:      opts,
		log:       opts.Logger,
		inst:      hex.EncodeToString(id[:]),
		expiryKey: "{" + opts.Namespace + "}:expiry",
		totalsKey: "{" + opts.Namespace + "}:totals",
		channel:   opts.Namespace + ":bus",

		handoffKey:      "{" + opts.Namespace + "}:handoffs",
		handoffOwnerKey: "{" + opts.Namespace + "}:handoff-owners",
		ops:             make(chan *op, 4*opts.MaxBatch),
		done:            make(chan struct{}),
		presence:        make(map[presenceKey]struct{}),
		keys:            keyCache{max: opts.KeyCache, m: make(map[string]string)},
	}
	if err := s.loadScripts(ctx); err != nil {
		return nil, fmt.Errorf("redisstore: %w", err)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go s.run()
	s.wg.Add(1)
	go s.refreshPresence()
	return s, nil
}

func (s *Store) loadScripts(ctx context.Context) error {
	for _, sc := range append([]*redis.Script{putScript, ackScript, sweepScript, pendingScript, connectScript, presenceScript, dropIndexScript}, handoffScripts...) {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return fmt.Errorf("load scripts: %w", err)
		}
	}
	return nil
}

// prefix is the name prefix of key's data: "<ns>:{<key>}:".
func (s *Store) prefix(key string) string { return s.opts.Namespace + ":{" + key + "}:" }

// indexKey is a message ID's entry in the ID index.
func (s *Store) indexKey(id string) string { return s.opts.Namespace + ":id:{" + id + "}" }

// Instance is this store's random instance ID (as in its bus events).
func (s *Store) Instance() string { return s.inst }

// op is one queued write.
type op struct {
	put   *relay.Message
	early func(relay.PutResult)
	pres  chan relay.PutResult
	now   int64 // µs, for the expiry index
	// handoff: PutHandoff, due at due (ms).
	handoff bool
	due     int64

	sub  relay.Subscriber
	id   string
	ares chan relay.AckResult
}

func (s *Store) enqueue(o *op) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return false
	}
	s.ops <- o
	return true
}

// Put implements relay.Store.
func (s *Store) Put(m relay.Message, early func(relay.PutResult)) <-chan relay.PutResult {
	ch := make(chan relay.PutResult, 1)
	m.Seq, m.StoredAt = 0, time.Time{}
	if !s.enqueue(&op{put: &m, early: early, pres: ch, now: time.Now().UnixMicro()}) {
		ch <- relay.PutResult{Err: relay.ErrClosed}
	}
	return ch
}

// Ack implements relay.Store.
func (s *Store) Ack(sub relay.Subscriber, messageID string) <-chan relay.AckResult {
	ch := make(chan relay.AckResult, 1)
	if !s.enqueue(&op{sub: sub, id: messageID, ares: ch}) {
		ch <- relay.AckResult{Err: relay.ErrClosed}
	}
	return ch
}

// run is the writer: batches of queued writes, in call order.
func (s *Store) run() {
	defer close(s.done)
	batch := make([]*op, 0, s.opts.MaxBatch)
	for o := range s.ops {
		batch = append(batch[:0], o)
	fill:
		for len(batch) < s.opts.MaxBatch {
			select {
			case o, ok := <-s.ops:
				if !ok {
					break fill
				}
				batch = append(batch, o)
			default:
				break fill
			}
		}
		s.commit(batch)
		clear(batch)
	}
}

// commit runs one batch: the ID lookups, then the scripts, then the
// results in call order.
func (s *Store) commit(batch []*op) {
	if i := idConflict(batch); i > 0 {
		// The lookups of step 1 run before any of the batch's scripts, so
		// they cannot see a put earlier in the batch: a put of the same ID
		// for another key waits for the next batch, which sees it.
		s.commit(batch[:i])
		s.commit(batch[i:])
		return
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()

	// 1. Where is each message ID stored? An ack needs the key; a put of
	// an ID stored under another key is refused. An ack of an ID whose key
	// is known (a put earlier in this batch, or remembered) skips the
	// lookup; should the message not be there after all, step 3 looks it
	// up and acks it again.
	keys := make([]string, len(batch))
	guessed := make([]bool, len(batch))
	lookups := make([]*redis.StringCmd, len(batch))
	putKey := make(map[string]string) // ID -> key of a put earlier in this batch
	var pipe redis.Pipeliner
	for i, o := range batch {
		id := o.id
		if o.put != nil {
			id = o.put.ID
			putKey[id] = o.put.Key
		} else if k, ok := putKey[id]; ok {
			keys[i], guessed[i] = k, true
			continue
		} else if k, ok := s.keys.get(id); ok {
			keys[i], guessed[i] = k, true
			continue
		}
		if pipe == nil {
			pipe = s.rdb.Pipeline()
		}
		lookups[i] = pipe.Get(ctx, s.indexKey(id))
	}
	if pipe != nil {
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			s.failBatch(batch, fmt.Errorf("redisstore: look up message IDs: %w", err))
			return
		}
	}
	mismatch := make([]bool, len(batch))
	clear(putKey)
	var checks []int
	for i, o := range batch {
		if lookups[i] == nil {
			continue
		}
		k, err := lookups[i].Result()
		if err != nil {
			k = ""
		}
		if o.put != nil {
			if k != "" && k != o.put.Key {
				checks = append(checks, i) // stored under another key, or was
				keys[i] = k
			}
			putKey[o.put.ID] = o.put.Key
			continue
		}
		if k == "" {
			k = putKey[o.id]
		}
		keys[i] = k
	}
	if len(checks) > 0 {
		// Rare: is the ID still stored under the other key?
		pipe := s.rdb.Pipeline()
		ex := make([]*redis.BoolCmd, len(checks))
		for j, i := range checks {
			ex[j] = pipe.HExists(ctx, s.prefix(keys[i])+"m", batch[i].put.ID)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			s.failBatch(batch, fmt.Errorf("redisstore: check message IDs: %w", err))
			return
		}
		for j, i := range checks {
			mismatch[i] = ex[j].Val()
		}
	}

	// 2. The scripts, in call order, in one pipeline.
	res, err := s.runScripts(ctx, batch, keys, mismatch)
	if err != nil {
		s.failBatch(batch, err)
		return
	}
	if err := s.ackAgain(ctx, batch, keys, guessed, res); err != nil {
		s.failBatch(batch, err)
		return
	}
	if s.opts.OnCommit != nil {
		s.opts.OnCommit(len(batch), time.Since(start))
	}

	// 3. Take back the totals of puts that stored nothing, then the
	// results, in call order.
	var notMessages, notBytes int64
	for i, o := range batch {
		if o.put != nil && !mismatch[i] && !storedBy(res[i]) {
			notMessages++
			notBytes += int64(len(o.put.Ciphertext))
		}
	}
	if notMessages > 0 {
		pipe := s.rdb.Pipeline()
		pipe.HIncrBy(ctx, s.totalsKey, "messages", -notMessages)
		pipe.HIncrBy(ctx, s.totalsKey, "bytes", -notBytes)
		if _, err := pipe.Exec(ctx); err != nil {
			s.log.Error("update totals failed; Stats may be off", "err", err)
		}
	}
	for i, o := range batch {
		if o.put != nil {
			s.putResult(o, mismatch[i], res[i])
		} else {
			s.ackResult(o, res[i])
		}
	}
}

// idConflict returns the index of the first put in batch of a message ID
// that a put earlier in batch has for another subscription key, or 0.
func idConflict(batch []*op) int {
	var seen map[string]string
	for i, o := range batch {
		if o.put == nil {
			continue
		}
		if k, ok := seen[o.put.ID]; ok && k != o.put.Key {
			return i
		}
		if seen == nil {
			seen = make(map[string]string)
		}
		seen[o.put.ID] = o.put.Key
	}
	return 0
}

// ackAgain is step 3 of a commit: an ack sent to a key it was not looked
// up for (a put earlier in the batch, or the key cache) that found no
// message there is looked up in the ID index and, if the message is stored
// under another key, run again there (replacing its result). Rare: the
// message was swept and stored again for another recipient, or the put it
// followed was refused.
func (s *Store) ackAgain(ctx context.Context, batch []*op, keys []string, guessed []bool, res []*opRes) error {
	var again []int
	for i, o := range batch {
		if r := res[i]; o.put == nil && guessed[i] && r != nil && r.err == nil {
			if found, _ := r.vals[0].(int64); found == 0 {
				again = append(again, i)
			}
		}
	}
	if len(again) == 0 {
		return nil
	}
	pipe := s.rdb.Pipeline()
	lookups := make([]*redis.StringCmd, len(again))
	for j, i := range again {
		s.keys.drop(batch[i].id)
		lookups[j] = pipe.Get(ctx, s.indexKey(batch[i].id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("redisstore: look up message IDs: %w", err)
	}
	pipe = s.rdb.Pipeline()
	var groups []*scriptGroup
	for j, i := range again {
		k, err := lookups[j].Result()
		if err != nil || k == "" || k == keys[i] {
			continue
		}
		keys[i] = k
		g := &scriptGroup{key: k, ops: []int{i}}
		s.queueAcks(ctx, pipe, batch, g)
		groups = append(groups, g)
	}
	if len(groups) == 0 {
		return nil
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) && isConnErr(err) {
		return fmt.Errorf("redisstore: write: %w", err)
	}
	for _, g := range groups {
		spread(g, res)
	}
	return nil
}

// keyCache remembers the subscription key of recent message IDs, the
// oldest forgotten first. Safe for concurrent use (the writer and the bus
// listener).
type keyCache struct {
	mu   sync.Mutex
	max  int
	m    map[string]string
	ring []string // IDs in the order they were added; ring[next] is the oldest once full
	next int
}

func (c *keyCache) get(id string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k, ok := c.m[id]
	return k, ok
}

func (c *keyCache) add(id, key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[id]; ok {
		c.m[id] = key
		return
	}
	if len(c.ring) < c.max {
		c.ring = append(c.ring, id)
	} else {
		delete(c.m, c.ring[c.next]) // may forget a re-added ID early: a lookup then
		c.ring[c.next] = id
		c.next = (c.next + 1) % c.max
	}
	c.m[id] = key
}

func (c *keyCache) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
}

// opRes is the outcome of one write's part of a script: its values (a
// putStride or ackStride slice of the script's reply) or the script's
// error.
type opRes struct {
	vals []any
	err  error
}

// storedBy reports whether a put script stored a new message.
func storedBy(r *opRes) bool {
	if r == nil || r.err != nil || len(r.vals) == 0 {
		return false
	}
	st, _ := r.vals[0].(int64)
	return st == 0
}

// scriptGroup is one script call of a batch: consecutive writes of one
// kind (puts, or acks) to one subscription key. A key's writes of the
// other kind in between start a new group, so that each key sees its
// writes in call order; writes to different keys touch nothing in common.
type scriptGroup struct {
	put bool
	key string
	ops []int // indexes in the batch, in call order
	cmd *redis.Cmd
}

// groupScripts groups the batch's writes that run a script (see
// scriptGroup), in the order of each group's first write.
func groupScripts(batch []*op, keys []string, mismatch []bool) []*scriptGroup {
	var groups []*scriptGroup
	open := make(map[string]*scriptGroup)
	for i, o := range batch {
		key, put := keys[i], o.put != nil
		if put {
			if mismatch[i] {
				continue
			}
			key = o.put.Key
		} else if key == "" {
			continue
		}
		g := open[key]
		if g == nil || g.put != put {
			g = &scriptGroup{put: put, key: key}
			groups = append(groups, g)
			open[key] = g
		}
		g.ops = append(g.ops, i)
	}
	return groups
}

// queuePuts queues on pipe what a group of puts writes: the ID index and
// hand-off entries, the key in the expiry index, and the put script.
func (s *Store) queuePuts(ctx context.Context, pipe redis.Pipeliner, batch []*op, g *scriptGroup) {
	p := s.prefix(g.key)
	q := s.opts.Quota
	// The earliest of the group's times (ZADD LT keeps the smallest).
	now := batch[g.ops[0]].now
	for _, i := range g.ops {
		now = min(now, batch[i].now)
	}
	pipe.ZAddArgs(ctx, s.expiryKey, redis.ZAddArgs{LT: true, Members: []redis.Z{{Score: float64(now), Member: g.key}}})
	args := make([]any, 0, 6+4*len(g.ops))
	args = append(args, p, q.MaxMessages, q.MaxBytes, s.channel, s.inst, g.key)
	for _, i := range g.ops {
		o := batch[i]
		m := o.put
		pipe.Set(ctx, s.indexKey(m.ID), m.Key, 0)
		handoff := ""
		if o.handoff {
			// The index first: it may name a hand-off that is not
			// pending (a claim drops it), never miss one.
			handoff = "1"
			pipe.ZAddArgs(ctx, s.handoffKey, redis.ZAddArgs{NX: true, Members: []redis.Z{{Score: float64(o.due), Member: handoffEntry(m.Key, m.ID)}}})
		}
		args = append(args, m.ID, m.Recipient, m.Ciphertext, handoff)
	}
	g.cmd = putScript.EvalSha(ctx, pipe, []string{p + "m"}, args...)
}

// queueAcks queues on pipe the ack script of a group of acks.
func (s *Store) queueAcks(ctx context.Context, pipe redis.Pipeliner, batch []*op, g *scriptGroup) {
	p := s.prefix(g.key)
	args := make([]any, 0, 3+3*len(g.ops))
	args = append(args, p, s.channel, s.inst)
	for _, i := range g.ops {
		o := batch[i]
		tag, peer := "u:"+o.sub.ID, ""
		if o.sub.Peer {
			tag, peer = "p:"+o.sub.ID, o.sub.ID
		}
		args = append(args, o.id, tag, peer)
	}
	g.cmd = ackScript.EvalSha(ctx, pipe, []string{p + "m"}, args...)
}

// spread gives each write of g its part of the group's reply.
func spread(g *scriptGroup, res []*opRes) {
	stride := ackStride
	if g.put {
		stride = putStride
	}
	vals, err := g.cmd.Slice()
	if err == nil && len(vals) != stride*len(g.ops) {
		err = fmt.Errorf("script returned %d values for %d writes", len(vals), len(g.ops))
	}
	for j, i := range g.ops {
		if err != nil {
			res[i] = &opRes{err: err}
			continue
		}
		res[i] = &opRes{vals: vals[j*stride : (j+1)*stride]}
	}
}

// runScripts runs the batch's scripts in one pipeline. res[i] is nil for
// a write decided without a script. If Redis has lost its script cache (a
// restart, a failover) before any of them ran, it loads them and retries.
func (s *Store) runScripts(ctx context.Context, batch []*op, keys []string, mismatch []bool) ([]*opRes, error) {
	groups := groupScripts(batch, keys, mismatch)
	for attempt := 0; ; attempt++ {
		pipe := s.rdb.Pipeline()
		// The totals count every put as stored; putResult takes back the
		// ones that were not (republishes, refusals) before any result is
		// sent, so Stats is exact once a result is out.
		var puts, bytes int64
		for _, g := range groups {
			if !g.put {
				s.queueAcks(ctx, pipe, batch, g)
				continue
			}
			for _, i := range g.ops {
				puts++
				bytes += int64(len(batch[i].put.Ciphertext))
			}
			s.queuePuts(ctx, pipe, batch, g)
		}
		if puts > 0 {
			pipe.HIncrBy(ctx, s.totalsKey, "messages", puts)
			pipe.HIncrBy(ctx, s.totalsKey, "bytes", bytes)
		}
		_, err := pipe.Exec(ctx)
		res := make([]*opRes, len(batch))
		if err == nil || errors.Is(err, redis.Nil) {
			for _, g := range groups {
				spread(g, res)
			}
			return res, nil
		}
		noScript := 0
		for _, g := range groups {
			if e := g.cmd.Err(); e != nil && redis.HasErrorPrefix(e, "NOSCRIPT") {
				noScript++
			}
		}
		if attempt == 0 && noScript > 0 && noScript == len(groups) {
			s.log.Warn("Redis lost the scripts (restarted or failed over): loading them again")
			if puts > 0 { // counted, but nothing ran
				pipe := s.rdb.Pipeline()
				pipe.HIncrBy(ctx, s.totalsKey, "messages", -puts)
				pipe.HIncrBy(ctx, s.totalsKey, "bytes", -bytes)
				if _, err := pipe.Exec(ctx); err != nil {
					return nil, fmt.Errorf("redisstore: write: %w", err)
				}
			}
			if lerr := s.loadScripts(ctx); lerr != nil {
				return nil, fmt.Errorf("redisstore: %w", lerr)
			}
			continue
		}
		if noScript == 0 && len(groups) > 0 && !isConnErr(err) {
			// Script errors are per call: report each with its writes.
			for _, g := range groups {
				spread(g, res)
			}
			return res, nil
		}
		return nil, fmt.Errorf("redisstore: write: %w", err)
	}
}

// isConnErr reports whether err is about the connection rather than one
// command.
func isConnErr(err error) bool {
	var re redis.Error
	return !errors.As(err, &re)
}

func (s *Store) failBatch(batch []*op, err error) {
	s.log.Error("write failed", "writes", len(batch), "err", err)
	for _, o := range batch {
		if o.put != nil {
			o.pres <- relay.PutResult{Err: err}
		} else {
			o.ares <- relay.AckResult{Err: err}
		}
	}
}

func (s *Store) putResult(o *op, mismatch bool, r *opRes) {
	m := *o.put
	if mismatch {
		o.pres <- relay.PutResult{Err: fmt.Errorf("redisstore: put %s: %w", m.ID, relay.ErrRecipientMismatch)}
		return
	}
	if r == nil || r.err != nil {
		var err error
		if r != nil {
			err = r.err
		}
		o.pres <- relay.PutResult{Err: fmt.Errorf("redisstore: put %s: %v", m.ID, err)}
		return
	}
	vals := r.vals
	status, _ := vals[0].(int64)
	switch status {
	case -1:
		o.pres <- relay.PutResult{Err: fmt.Errorf("redisstore: put %s: key %s holds %v unacked messages of %v bytes; %d more bytes exceed its quota: %w",
			m.ID, m.Key, vals[1], vals[2], len(m.Ciphertext), relay.ErrOverQuota)}
		return
	case -2:
		o.pres <- relay.PutResult{Err: fmt.Errorf("redisstore: put %s: %w", m.ID, relay.ErrRecipientMismatch)}
		return
	}
	seq, _ := strconv.ParseInt(fmt.Sprint(vals[1]), 10, 64)
	at, _ := strconv.ParseInt(fmt.Sprint(vals[2]), 10, 64)
	acked, _ := vals[3].(int64)
	online, _ := vals[4].(int64)
	m.Seq, m.StoredAt = seq, time.UnixMicro(at)
	s.keys.add(m.ID, m.Key)
	hs, _ := vals[5].(int64)
	res := relay.PutResult{Message: m, Existing: status == 1, RecipientAcked: acked == 1, RecipientOnline: online == 1, Handoff: relay.HandoffState(hs)}
	if o.early != nil {
		o.early(res)
	}
	o.pres <- res
}

func (s *Store) ackResult(o *op, r *opRes) {
	if r == nil {
		o.ares <- relay.AckResult{}
		return
	}
	if r.err != nil {
		o.ares <- relay.AckResult{Err: fmt.Errorf("redisstore: ack %s: %v", o.id, r.err)}
		return
	}
	vals := r.vals
	found, _ := vals[0].(int64)
	by, _ := vals[1].(int64)
	rcpt, _ := vals[2].(string)
	if found == 0 {
		o.ares <- relay.AckResult{}
		return
	}
	o.ares <- relay.AckResult{Found: true, ByRecipient: by == 1, Recipient: rcpt}
}

// Pending implements relay.Store.
func (s *Store) Pending(ctx context.Context, sub relay.Subscriber, key string, after int64, limit int) ([]relay.Message, error) {
	if limit <= 0 {
		return nil, nil
	}
	if s.isClosed() {
		return nil, relay.ErrClosed
	}
	if after < 0 {
		after = 0
	}
	p := s.prefix(key)
	tag, peer := "u:"+sub.ID, ""
	if sub.Peer {
		tag, peer = "p:"+sub.ID, sub.ID
	}
	vals, err := pendingScript.Run(ctx, s.rdb, []string{p + "m"}, p, after, limit, tag, peer).Slice()
	if err != nil {
		return nil, fmt.Errorf("redisstore: pending: %w", err)
	}
	out := make([]relay.Message, 0, len(vals)/3)
	for i := 0; i+2 < len(vals); i += 3 {
		id, _ := vals[i].(string)
		meta, _ := vals[i+1].(string)
		ct, _ := vals[i+2].(string)
		m, err := parseMeta(meta)
		if err != nil {
			return nil, fmt.Errorf("redisstore: pending: message %s: %w", id, err)
		}
		m.ID, m.Key, m.Ciphertext = id, key, []byte(ct)
		out = append(out, m)
	}
	return out, nil
}

// parseMeta reads "seq storedAt size recipient".
func parseMeta(v string) (relay.Message, error) {
	f := strings.SplitN(v, " ", 4)
	if len(f) != 4 {
		return relay.Message{}, fmt.Errorf("bad entry %q", v)
	}
	seq, err1 := strconv.ParseInt(f[0], 10, 64)
	at, err2 := strconv.ParseInt(f[1], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return relay.Message{}, err
	}
	return relay.Message{Seq: seq, StoredAt: time.UnixMicro(at), Recipient: f[3]}, nil
}

// Sweep implements relay.Store: it walks the expiry index from its oldest
// entry, sweeping each key's messages older than cutoff in chunks.
func (s *Store) Sweep(ctx context.Context, cutoff time.Time) (int, error) {
	if s.isClosed() {
		return 0, relay.ErrClosed
	}
	// Stored strictly before cutoff: at (µs) < ceil(cutoff in µs).
	ns := cutoff.UnixNano()
	limit := ns / 1000
	if ns%1000 != 0 && ns > 0 {
		limit++
	}
	lim := strconv.FormatInt(limit, 10)
	total := 0
	for {
		keys, err := s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{
			Key: s.expiryKey, Start: "-inf", Stop: "(" + lim, ByScore: true, Count: sweepKeys,
		}).Result()
		if err != nil {
			return total, fmt.Errorf("redisstore: sweep: %w", err)
		}
		for _, k := range keys {
			n, err := s.sweepKey(ctx, k, lim)
			total += n
			if err != nil {
				return total, err
			}
		}
		if len(keys) < sweepKeys {
			return total, nil
		}
	}
}

func (s *Store) sweepKey(ctx context.Context, key, lim string) (int, error) {
	p := s.prefix(key)
	total := 0
	for {
		vals, err := sweepScript.Run(ctx, s.rdb, []string{p + "m"}, p, lim, sweepChunk).Slice()
		if err != nil || len(vals) < 3 {
			return total, fmt.Errorf("redisstore: sweep %s: %v", key, err)
		}
		count, _ := vals[0].(int64)
		bytes, _ := vals[1].(int64)
		oldest, _ := vals[2].(string)
		total += int(count)
		pipe := s.rdb.Pipeline()
		if count > 0 {
			pipe.HIncrBy(ctx, s.totalsKey, "messages", -count)
			pipe.HIncrBy(ctx, s.totalsKey, "bytes", -bytes)
			for _, v := range vals[3:] {
				id, _ := v.(string)
				s.keys.drop(id)
				dropIndexScript.Eval(ctx, pipe, []string{s.indexKey(id)}, key) // Eval: a pipeline cannot fall back on NOSCRIPT
				// Its hand-off went with it (the sweep script).
				pipe.ZRem(ctx, s.handoffKey, handoffEntry(key, id))
				pipe.HDel(ctx, s.handoffOwnerKey, handoffEntry(key, id))
			}
		}
		if oldest != "" {
			score, _ := strconv.ParseFloat(oldest, 64)
			pipe.ZAddArgs(ctx, s.expiryKey, redis.ZAddArgs{GT: true, Members: []redis.Z{{Score: score, Member: key}}})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return total, fmt.Errorf("redisstore: sweep %s: %w", key, err)
		}
		if oldest != "" && count < sweepChunk {
			return total, nil
		}
		if oldest == "" {
			// Nothing left: drop the key from the index, then look again,
			// as a put may have come in between (it adds the key back
			// itself, unless it ran before the removal).
			if err := s.rdb.ZRem(ctx, s.expiryKey, key).Err(); err != nil {
				return total, fmt.Errorf("redisstore: sweep %s: %w", key, err)
			}
			first, err := s.rdb.ZRangeWithScores(ctx, p+"t", 0, 0).Result()
			if err != nil {
				return total, fmt.Errorf("redisstore: sweep %s: %w", key, err)
			}
			if len(first) > 0 {
				s.rdb.ZAddArgs(ctx, s.expiryKey, redis.ZAddArgs{LT: true, Members: []redis.Z{{Score: first[0].Score, Member: key}}})
			}
			return total, nil
		}
	}
}

// Stats implements relay.Store from the running totals.
func (s *Store) Stats(ctx context.Context) (relay.Stats, error) {
	if s.isClosed() {
		return relay.Stats{}, relay.ErrClosed
	}
	v, err := s.rdb.HMGet(ctx, s.totalsKey, "messages", "bytes").Result()
	if err != nil {
		return relay.Stats{}, fmt.Errorf("redisstore: stats: %w", err)
	}
	var st relay.Stats
	if x, ok := v[0].(string); ok {
		st.Messages, _ = strconv.ParseInt(x, 10, 64)
	}
	if x, ok := v[1].(string); ok {
		st.Bytes, _ = strconv.ParseInt(x, 10, 64)
	}
	return st, nil
}

// Ready implements relay.Readier: Redis answers a PING.
func (s *Store) Ready(ctx context.Context) error {
	if s.isClosed() {
		return relay.ErrClosed
	}
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	return nil
}

func (s *Store) isClosed() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.closed
}

// Close commits what is queued, stops the bus and closes the client.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.done
		return nil
	}
	s.closed = true
	close(s.ops)
	s.mu.Unlock()
	<-s.done
	s.cancel()
	s.wg.Wait()
	return s.rdb.Close()
}

// NewClient builds the Redis client that st describes: a plain client for
// store.url, or a Sentinel-aware one (it follows failovers to the new
// primary) for store.sentinel_addrs with store.master_name. The password
// in store.password_file, if any, overrides one in the URL.
func NewClient(st relay.StoreConfig) (redis.UniversalClient, error) {
	var password string
	if st.PasswordFile != "" {
		b, err := os.ReadFile(st.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("config: store.password_file: %w", err)
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	if st.URL != "" {
		o, err := redis.ParseURL(st.URL)
		if err != nil {
			return nil, fmt.Errorf("config: store.url: %w", err)
		}
		if password != "" {
			o.Password = password
		}
		return redis.NewClient(o), nil
	}
	if len(st.SentinelAddrs) == 0 || st.MasterName == "" {
		return nil, errors.New("config: store.url or store.sentinel_addrs with store.master_name is required for driver \"redis\"")
	}
	return redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:    st.MasterName,
		SentinelAddrs: st.SentinelAddrs,
		Password:      password,
	}), nil
}
