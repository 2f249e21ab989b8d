package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"courier/relay"
)

// The OFFLINE bridge's hand-offs (relay.HandoffStore). The truth is per
// subscription key, next to the message and changed by the same scripts
// (P.."h", see scripts.go): the put script records a pending hand-off with
// the message, the sweep deletes it with the message. Beside it, two
// global entries tagged {<ns>} (one hash slot, so the claim is one atomic
// script): a sorted set of "<key>\n<id>" by due time (milliseconds), the
// index claims read, and a hash of who holds each claim. The index is
// written before the per-key state and cleaned up after it, so it may
// name a hand-off that is no longer pending (a claim drops such entries),
// never miss one that is.

// luaHandoff parses a P.."h" entry: 0 none, 1 pending, 2 done.
const luaHandoff = `
local function handoffState(h)
  if not h then return 0 end
  if string.sub(h, 1, 1) == 'd' then return 2 end
  return 1
end
`

// handoffClaimScript: KEYS = the index, the claim owners; ARGV = now (ms),
// end of the lease (ms), limit, owner. Claims up to limit entries due by
// now: due again at the lease's end, owned by owner. Returns them.
var handoffClaimScript = redis.NewScript(`
local ms = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(ms) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], m)
  redis.call('HSET', KEYS[2], m, ARGV[4])
end
return ms
`)

// handoffLoadScript: KEYS[1] = P.."m"; ARGV = P, id. Returns {0} when the
// hand-off is not pending (or the message is gone), else {1, meta,
// ciphertext, recipientAcked, failed attempts}.
var handoffLoadScript = redis.NewScript(luaMeta + `
local P, id = ARGV[1], ARGV[2]
local h = redis.call('HGET', P..'h', id)
if not h or string.sub(h, 1, 1) ~= 'p' then return {0} end
local v = redis.call('HGET', KEYS[1], id)
if not v then return {0} end
local seq, at, size, rcpt = meta(v)
local acked = 1
if redis.call('ZSCORE', P..'u:'..rcpt, id) then acked = 0 end
return {1, v, redis.call('HGET', P..'b', id), acked, tonumber(string.sub(h, 3)) or 0}
`)

// handoffSetScript: KEYS[1] = P.."m"; ARGV = P, id, op. op "done": the
// hand-off is made (if the message is stored); "drop": a pending one is
// removed; "fail": a pending one counts one more failed attempt.
var handoffSetScript = redis.NewScript(`
local P, id, op = ARGV[1], ARGV[2], ARGV[3]
local h = redis.call('HGET', P..'h', id)
if op == 'done' then
  if redis.call('HEXISTS', KEYS[1], id) == 1 then redis.call('HSET', P..'h', id, 'd') end
elseif h and string.sub(h, 1, 1) == 'p' then
  if op == 'drop' then
    redis.call('HDEL', P..'h', id)
  else
    redis.call('HSET', P..'h', id, 'p '..tostring((tonumber(string.sub(h, 3)) or 0) + 1))
  end
end
return 0
`)

// handoffReleaseScript: KEYS = the index, the claim owners; ARGV = entry,
// owner, due (ms). If owner still holds the claim on entry, it is due
// again at due and unclaimed; returns 1, else 0.
var handoffReleaseScript = redis.NewScript(`
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
`)

var handoffScripts = []*redis.Script{handoffClaimScript, handoffLoadScript, handoffSetScript, handoffReleaseScript}

var _ relay.HandoffStore = (*Store)(nil)

// handoffEntry is a hand-off's member in the index.
func handoffEntry(key, id string) string { return key + "\n" + id }

// PutHandoff is Put that also records a pending hand-off of m, due at due,
// in the same script as the message (see relay.HandoffStore).
func (s *Store) PutHandoff(m relay.Message, due time.Time, early func(relay.PutResult)) <-chan relay.PutResult {
	ch := make(chan relay.PutResult, 1)
	m.Seq, m.StoredAt = 0, time.Time{}
	if !s.enqueue(&op{put: &m, early: early, pres: ch, now: time.Now().UnixMicro(), handoff: true, due: due.UnixMilli()}) {
		ch <- relay.PutResult{Err: relay.ErrClosed}
	}
	return ch
}

// keyOf returns the subscription key message id is stored under, "" if
// it is not stored.
func (s *Store) keyOf(ctx context.Context, id string) (string, error) {
	k, err := s.rdb.Get(ctx, s.indexKey(id)).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	return k, err
}

// ClaimHandoffs implements relay.HandoffStore.
func (s *Store) ClaimHandoffs(ctx context.Context, owner string, now time.Time, lease time.Duration, limit int) ([]relay.Handoff, error) {
	if limit <= 0 {
		return nil, nil
	}
	if s.isClosed() {
		return nil, relay.ErrClosed
	}
	entries, err := handoffClaimScript.Run(ctx, s.rdb, []string{s.handoffKey, s.handoffOwnerKey},
		now.UnixMilli(), now.Add(lease).UnixMilli(), limit, owner).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("redisstore: claim hand-offs: %w", err)
	}
	var out []relay.Handoff
	for _, e := range entries {
		key, id, ok := strings.Cut(e, "\n")
		if !ok {
			s.forgetHandoff(ctx, e)
			continue
		}
		p := s.prefix(key)
		vals, err := handoffLoadScript.Run(ctx, s.rdb, []string{p + "m"}, p, id).Slice()
		if err != nil {
			return out, fmt.Errorf("redisstore: claim hand-offs: load %s: %w", id, err)
		}
		if st, _ := vals[0].(int64); st != 1 || len(vals) != 5 {
			s.forgetHandoff(ctx, e) // not pending any more: a stale index entry
			continue
		}
		meta, _ := vals[1].(string)
		ct, _ := vals[2].(string)
		acked, _ := vals[3].(int64)
		attempts, _ := vals[4].(int64)
		m, err := parseMeta(meta)
		if err != nil {
			return out, fmt.Errorf("redisstore: claim hand-offs: message %s: %w", id, err)
		}
		m.ID, m.Key, m.Ciphertext = id, key, []byte(ct)
		out = append(out, relay.Handoff{Message: m, Attempts: int(attempts), Acked: acked == 1})
	}
	return out, nil
}

// forgetHandoff removes an index entry.
func (s *Store) forgetHandoff(ctx context.Context, entry string) {
	pipe := s.rdb.Pipeline()
	pipe.ZRem(ctx, s.handoffKey, entry)
	pipe.HDel(ctx, s.handoffOwnerKey, entry)
	if _, err := pipe.Exec(ctx); err != nil {
		s.log.Warn("removing a hand-off index entry failed; a later claim retries", "err", err)
	}
}

// setHandoff runs handoffSetScript for message id, then removes its index
// entry when forget is set. A message not stored is a no-op.
func (s *Store) setHandoff(ctx context.Context, id, op string, forget bool) error {
	if s.isClosed() {
		return relay.ErrClosed
	}
	key, err := s.keyOf(ctx, id)
	if err != nil {
		return fmt.Errorf("redisstore: hand-off %s %s: %w", op, id, err)
	}
	if key == "" {
		return nil
	}
	p := s.prefix(key)
	if err := handoffSetScript.Run(ctx, s.rdb, []string{p + "m"}, p, id, op).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("redisstore: hand-off %s %s: %w", op, id, err)
	}
	if forget {
		s.forgetHandoff(ctx, handoffEntry(key, id))
	}
	return nil
}

// FinishHandoff implements relay.HandoffStore: recorded with the message
// first, then the index entry goes.
func (s *Store) FinishHandoff(ctx context.Context, messageID string) error {
	return s.setHandoff(ctx, messageID, "done", true)
}

// DropHandoff implements relay.HandoffStore.
func (s *Store) DropHandoff(ctx context.Context, messageID string) error {
	return s.setHandoff(ctx, messageID, "drop", true)
}

// RetryHandoff implements relay.HandoffStore.
func (s *Store) RetryHandoff(ctx context.Context, messageID, owner string, due time.Time) error {
	if s.isClosed() {
		return relay.ErrClosed
	}
	key, err := s.keyOf(ctx, messageID)
	if err != nil || key == "" {
		return err
	}
	held, err := handoffReleaseScript.Run(ctx, s.rdb, []string{s.handoffKey, s.handoffOwnerKey},
		handoffEntry(key, messageID), owner, due.UnixMilli()).Int()
	if err != nil {
		return fmt.Errorf("redisstore: retry hand-off %s: %w", messageID, err)
	}
	if held == 0 {
		return nil // another owner's claim now, or finished
	}
	return s.setHandoff(ctx, messageID, "fail", false)
}

// HandoffStatus implements relay.HandoffStore.
func (s *Store) HandoffStatus(ctx context.Context, messageID string) (relay.HandoffState, error) {
	if s.isClosed() {
		return 0, relay.ErrClosed
	}
	key, err := s.keyOf(ctx, messageID)
	if err != nil {
		return 0, fmt.Errorf("redisstore: hand-off status: %w", err)
	}
	if key == "" {
		return relay.HandoffNone, nil
	}
	h, err := s.rdb.HGet(ctx, s.prefix(key)+"h", messageID).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return relay.HandoffNone, nil
	case err != nil:
		return 0, fmt.Errorf("redisstore: hand-off status: %w", err)
	case strings.HasPrefix(h, "d"):
		return relay.HandoffDone, nil
	default:
		return relay.HandoffPending, nil
	}
}

// NextHandoff implements relay.HandoffStore: the index's first entry (it
// may be stale; a claim then drops it).
func (s *Store) NextHandoff(ctx context.Context) (time.Time, bool, error) {
	if s.isClosed() {
		return time.Time{}, false, relay.ErrClosed
	}
	first, err := s.rdb.ZRangeWithScores(ctx, s.handoffKey, 0, 0).Result()
	if err != nil {
		return time.Time{}, false, fmt.Errorf("redisstore: next hand-off: %w", err)
	}
	if len(first) == 0 {
		return time.Time{}, false, nil
	}
	ms, _ := strconv.ParseInt(strconv.FormatFloat(first[0].Score, 'f', 0, 64), 10, 64)
	return time.UnixMilli(ms), true, nil
}
