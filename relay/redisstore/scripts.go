package redisstore

import "github.com/redis/go-redis/v9"

// The Lua scripts. Each runs atomically in Redis and touches only keys of
// one subscription key, whose names all carry the hash tag {<key>} and so
// share one hash slot: KEYS[1] is that key's message hash, and the other
// names are built from the prefix ARGV[1] ("<ns>:{<key>}:"). Redis runs a
// script as one unit, replicated and appended to the AOF as one.
//
// Per subscription key K, with P = "<ns>:{K}:":
//
//	P.."n"        string  the last Seq handed out (INCR); never deleted, so a Seq is never reused
//	P.."m"        hash    message ID -> "seq storedAt(µs) size recipient"
//	P.."b"        hash    message ID -> ciphertext
//	P.."q"        zset    message ID by Seq: the anonymous replay
//	P.."t"        zset    message ID by storedAt (µs): the sweep
//	P.."u:"..peer zset    message ID by Seq, addressed to peer and not acked by it: the peer's replay
//	P.."a:"..id   set     who else acked message id ("u:"..userID, "p:"..peerID); deleted with it
//	P.."s"        hash    n, b: messages and bytes not acked by their recipient (the quota)
//	P.."g:"..peer string  the peer's connection generation (INCR), for 4409 across instances
//	P.."o:"..peer string  the generation of the peer's live connection, with a TTL: presence
//	P.."h"        hash    message ID -> its OFFLINE hand-off: "p <failed attempts>" pending, "d" done
//
// Bus events are PUBLISHed from inside the scripts, so that the order of
// the events on the channel is the order of the commits, across instances.

// meta parses a message's entry in P.."m".
const luaMeta = `
local function meta(v)
  local seq, at, size, rcpt = string.match(v, '^(%d+) (%d+) (%d+) (.+)$')
  return seq, at, tonumber(size), rcpt
end
`

// putScript stores the messages of one batch that go to one subscription
// key, in order, as one script (each in turn as if stored alone, with its
// idempotency, recipient and quota checks). ARGV = P, max messages, max
// bytes, bus channel ("" for none), instance, subscription key, then for
// each message: id, recipient, ciphertext, hand-off ("1": record a
// pending hand-off unless the recipient acked or it has one). Returns, for
// each message, {status, seq, storedAt, recipientAcked, recipientOnline,
// hand-off state (0 none, 1 pending, 2 done; 0 without a hand-off)}:
// status 0 stored, 1 existing, -1 over quota (seq, storedAt = usage n, b),
// -2 stored for another recipient. One script for many messages spares
// Redis a script call, and the reads of the key's usage, presence and
// clock, per message: most of what a message cost it. The new messages
// are written at the end, each structure with one command (in chunks
// under Lua's unpack limit), and the bus events published after them, in
// order: no event announces a write that did not happen.
var putScript = redis.NewScript(luaMeta + luaHandoff + `
local P, ch, inst, key = ARGV[1], ARGV[4], ARGV[5], ARGV[6]
local maxN, maxB = tonumber(ARGV[2]), tonumber(ARGV[3])
local n, b = 0, 0
if maxN > 0 or maxB > 0 then
  local u = redis.call('HMGET', P..'s', 'n', 'b')
  n, b = tonumber(u[1] or '0'), tonumber(u[2] or '0')
end
local dn, db = 0, 0
local online = {}
local tm = redis.call('TIME')
local at = tm[1]..string.format('%06d', tonumber(tm[2]))
local last = tonumber(redis.call('GET', P..'n') or '0')
-- The group's new messages are written at the end, each command once
-- with all of them; new holds their entries meanwhile, so that a
-- republish later in the group finds them.
local new, newHandoff = {}, {}
local mA, bA, qA, tA, uA, hA = {}, {}, {}, {}, {}, {}
local ev = {} -- the bus events, published in order once everything is written
local out = {}
for i = 7, #ARGV, 4 do
  local id, rcpt, ct, ho = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local on = online[rcpt]
  if on == nil then
    on = redis.call('EXISTS', P..'o:'..rcpt)
    online[rcpt] = on
  end
  local v = new[id]
  local fresh = v ~= nil
  if not fresh then v = redis.call('HGET', KEYS[1], id) end
  if v then
    local seq, at0, size, r0 = meta(v)
    if r0 ~= rcpt then
      out[#out + 1] = -2; out[#out + 1] = '0'; out[#out + 1] = '0'
      out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = 0
    else
      local acked = 0 -- a message new in this group has no ack yet
      if not fresh and not redis.call('ZSCORE', P..'u:'..rcpt, id) then acked = 1 end
      if acked == 0 and ch ~= '' then
        ev[#ev + 1] = 'R\n'..inst..'\n'..key..'\n'..seq..'\n'..id..'\n'..rcpt..'\n'..at0..'\n'..ct
      end
      local hs = 0
      if ho == '1' then
        if fresh then
          if not newHandoff[id] then
            newHandoff[id] = true
            hA[#hA + 1] = id; hA[#hA + 1] = 'p 0'
          end
          hs = 1
        else
          if acked == 0 then redis.call('HSETNX', P..'h', id, 'p 0') end
          hs = handoffState(redis.call('HGET', P..'h', id))
        end
      end
      out[#out + 1] = 1; out[#out + 1] = seq; out[#out + 1] = at0
      out[#out + 1] = acked; out[#out + 1] = on; out[#out + 1] = hs
    end
  else
    local size = string.len(ct)
    if (maxN > 0 and n + 1 > maxN) or (maxB > 0 and b + size > maxB) then
      out[#out + 1] = -1; out[#out + 1] = tostring(n); out[#out + 1] = tostring(b)
      out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = 0
    else
      last = last + 1
      local seq = string.format('%d', last)
      local m = seq..' '..at..' '..size..' '..rcpt
      new[id] = m
      mA[#mA + 1] = id; mA[#mA + 1] = m
      bA[#bA + 1] = id; bA[#bA + 1] = ct
      qA[#qA + 1] = seq; qA[#qA + 1] = id
      tA[#tA + 1] = at; tA[#tA + 1] = id
      local ua = uA[rcpt]
      if ua == nil then ua = {}; uA[rcpt] = ua end
      ua[#ua + 1] = seq; ua[#ua + 1] = id
      n, b, dn, db = n + 1, b + size, dn + 1, db + size
      if ch ~= '' then
        ev[#ev + 1] = 'M\n'..inst..'\n'..key..'\n'..seq..'\n'..id..'\n'..rcpt..'\n'..at..'\n'..ct
      end
      local hs = 0
      if ho == '1' then
        newHandoff[id] = true
        hA[#hA + 1] = id; hA[#hA + 1] = 'p 0'
        hs = 1
      end
      out[#out + 1] = 0; out[#out + 1] = seq; out[#out + 1] = at
      out[#out + 1] = 0; out[#out + 1] = on; out[#out + 1] = hs
    end
  end
end
-- cmd key a1 a2 ... in chunks of whole pairs (unpack has a limit).
local function bulk(cmd, k, args)
  local i = 1
  while i <= #args do
    local j = math.min(i + 999, #args)
    redis.call(cmd, k, unpack(args, i, j))
    i = j + 1
  end
end
if dn > 0 then
  redis.call('SET', P..'n', string.format('%d', last))
  bulk('HSET', KEYS[1], mA)
  bulk('HSET', P..'b', bA)
  bulk('ZADD', P..'q', qA)
  bulk('ZADD', P..'t', tA)
  for r, ua in pairs(uA) do bulk('ZADD', P..'u:'..r, ua) end
  redis.call('HINCRBY', P..'s', 'n', dn)
  redis.call('HINCRBY', P..'s', 'b', db)
end
bulk('HSET', P..'h', hA)
for _, e in ipairs(ev) do redis.call('PUBLISH', ch, e) end
return out
`)

// putStride is how many values putScript returns per message.
const putStride = 6

// ackScript records the acks of one batch of messages stored under one
// subscription key, in order. ARGV = P, bus channel, instance, then for
// each ack: id, acker tag, peer ID when the subscriber is a peer (else "").
// Returns, for each ack, {found, byRecipient, recipient}.
var ackScript = redis.NewScript(luaMeta + `
local P, ch, inst = ARGV[1], ARGV[2], ARGV[3]
local dn, db = 0, 0
local out = {}
for i = 4, #ARGV, 3 do
  local id, tag, peer = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local v = redis.call('HGET', KEYS[1], id)
  if not v then
    out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = ''
  else
    local seq, at, size, rcpt = meta(v)
    if peer ~= '' and peer == rcpt then
      if redis.call('ZREM', P..'u:'..rcpt, id) == 1 then
        dn, db = dn + 1, db + size
      end
      if ch ~= '' then
        redis.call('PUBLISH', ch, 'A\n'..inst..'\n'..id)
      end
      out[#out + 1] = 1; out[#out + 1] = 1; out[#out + 1] = rcpt
    else
      redis.call('SADD', P..'a:'..id, tag)
      out[#out + 1] = 1; out[#out + 1] = 0; out[#out + 1] = rcpt
    end
  end
end
if dn > 0 then
  redis.call('HINCRBY', P..'s', 'n', 0 - dn)
  redis.call('HINCRBY', P..'s', 'b', 0 - db)
end
return out
`)

// ackStride is how many values ackScript returns per ack.
const ackStride = 3

// sweepScript: ARGV = P, exclusive cutoff (µs), limit. Deletes up to limit
// messages stored before the cutoff with everything kept for them.
// Returns {count, bytes, oldest storedAt left ("" when none), ids...}.
var sweepScript = redis.NewScript(luaMeta + `
local P = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', P..'t', '-inf', '('..ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local count, bytes = 0, 0
local out = {}
for _, id in ipairs(ids) do
  local v = redis.call('HGET', KEYS[1], id)
  if v then
    local seq, at, size, rcpt = meta(v)
    if redis.call('ZREM', P..'u:'..rcpt, id) == 1 then
      redis.call('HINCRBY', P..'s', 'n', -1)
      redis.call('HINCRBY', P..'s', 'b', 0 - size)
    end
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', P..'b', id)
    redis.call('ZREM', P..'q', id)
    redis.call('DEL', P..'a:'..id)
    redis.call('HDEL', P..'h', id)
    count = count + 1
    bytes = bytes + size
    out[#out + 1] = id
  end
  redis.call('ZREM', P..'t', id)
end
local u = redis.call('HGET', P..'s', 'n')
if u and tonumber(u) <= 0 then redis.call('DEL', P..'s') end
local first = redis.call('ZRANGE', P..'t', 0, 0, 'WITHSCORES')
local oldest = ''
if first[2] then oldest = first[2] end
local res = {count, bytes, oldest}
for _, id in ipairs(out) do res[#res + 1] = id end
return res
`)

// pendingScript: ARGV = P, after (Seq), limit, acker tag, peer ID ("" for
// an anonymous subscriber). Returns up to limit triples {id, meta,
// ciphertext} with Seq > after, oldest first: for a peer the messages
// addressed to it that it has not acked, for an anonymous subscriber every
// message of the key it has not acked. The anonymous scan reads the key's
// index in chunks and skips what the userID acked.
var pendingScript = redis.NewScript(`
local P, after, want, tag, peer = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local out = {}
local n = 0
if peer ~= '' then
  local ids = redis.call('ZRANGEBYSCORE', P..'u:'..peer, '('..after, '+inf', 'LIMIT', 0, want)
  for _, id in ipairs(ids) do
    local v = redis.call('HGET', KEYS[1], id)
    if v then
      out[#out + 1] = id
      out[#out + 1] = v
      out[#out + 1] = redis.call('HGET', P..'b', id)
    end
  end
  return out
end
local chunk = 256
while n < want do
  local ids = redis.call('ZRANGEBYSCORE', P..'q', '('..after, '+inf', 'WITHSCORES', 'LIMIT', 0, chunk)
  for i = 1, #ids, 2 do
    local id = ids[i]
    after = ids[i + 1]
    if redis.call('SISMEMBER', P..'a:'..id, tag) == 0 then
      out[#out + 1] = id
      out[#out + 1] = redis.call('HGET', KEYS[1], id)
      out[#out + 1] = redis.call('HGET', P..'b', id)
      n = n + 1
      if n >= want then break end
    end
  end
  if #ids < 2 * chunk then break end
end
return out
`)

// connectScript: ARGV = P, peer, presence TTL (ms), bus channel,
// instance. A new connection of peer: its generation, recorded as the
// peer's presence, and announced. Returns the generation.
var connectScript = redis.NewScript(`
local P, peer = ARGV[1], ARGV[2]
local gen = string.format('%d', redis.call('INCR', P..'g:'..peer))
redis.call('SET', KEYS[1], gen, 'PX', tonumber(ARGV[3]))
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], 'C\n'..ARGV[5]..'\n'..peer..'\n'..gen)
end
return gen
`)

// presenceScript: KEYS[1] = the peer's presence key; ARGV = generation,
// TTL (ms), delete ("1" to delete, else refresh). Refreshes (or deletes)
// the presence only while it is still this generation's. Returns 1 if it
// was, 0 if a newer connection holds it (or it expired).
var presenceScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 1
`)

// dropIndexScript: KEYS[1] = a message ID's index entry; ARGV = key.
// Deletes the entry if it still names key.
var dropIndexScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)
