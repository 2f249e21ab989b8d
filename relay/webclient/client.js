// Courier relay protocol for browsers: the light-client side of PROTOCOL.md
// ("Identities and keys", "Relay wire protocol", levels 1 and 2).
//
// A plain ES module, served as written (no build step); its libraries are
// vendored under vendor/ and found through the import map in index.html.
// Everything a test needs is exported.

import { sha256 as sha256Sync } from '@noble/hashes/sha2.js';
import { base58, base64, hex } from '@scure/base';
import * as ob from './ob.js';

/** Multihash codes a peer ID may use. */
export const MH_IDENTITY = 0x00;
export const MH_SHA2_256 = 0x12;

/** The prefix length the relay protocol uses for subscription keys. */
export const RELAY_PREFIX_BITS = 16;

/** The exact success answer to a subscribe; compared as a string. */
export const SUBSCRIBE_OK = '{"subscribe": true}';

/** Close codes the relay uses (PROTOCOL.md). */
export const CLOSE_POLICY = 1008;
export const CLOSE_RESTART = 1012;
export const CLOSE_REPLACED = 4409;

/** Encodes bytes as base58 (Bitcoin alphabet, as libp2p uses). */
export function base58Encode(bytes) {
  return base58.encode(bytes);
}

/** Decodes base58; throws on a character outside the alphabet. */
export function base58Decode(text) {
  if (typeof text !== 'string') throw new TypeError('base58Decode: want a string');
  return base58.decode(text);
}

/**
 * Parses a binary multihash with a one-byte code and a one-byte length (all
 * that peer IDs and subscription keys use) into {code, length, digest}.
 */
export function parseMultihash(bytes) {
  if (bytes.length < 2) throw new Error('multihash too short');
  const code = bytes[0];
  const length = bytes[1];
  if (code > 0x7f || length > 0x7f) throw new Error('multihash with a multi-byte code or length');
  const digest = bytes.subarray(2);
  if (digest.length !== length) {
    throw new Error(`multihash length ${length} does not match its ${digest.length}-byte digest`);
  }
  return { code, length, digest };
}

/** sha256 of bytes (async for the callers that await it). */
export async function sha256(bytes) {
  return sha256Sync(bytes);
}

/** Lowercase hex of bytes. */
export function toHex(bytes) {
  return hex.encode(bytes);
}

/**
 * The 32-byte digest a peer ID's subscription key is derived from: the
 * sha2-256 digest of a Qm… ID, or the sha256 of the marshalled key of an
 * identity-multihash (12D3Koo…) ID, the same for both forms of one peer.
 */
export async function peerDigest(peerID) {
  let p;
  try {
    p = ob.parsePeerID(peerID);
  } catch (err) {
    throw new Error(`invalid peer ID ${JSON.stringify(peerID)}: ${err.message}`);
  }
  return parseMultihash(base58.decode(p.canonical)).digest;
}

function subscriptionKeyOfDigest(digest, prefixBits) {
  const view = new DataView(digest.buffer, digest.byteOffset, 8);
  const prefix = view.getBigUint64(0) >> BigInt(64 - prefixBits);
  const buf = new Uint8Array(8);
  new DataView(buf.buffer).setBigUint64(0, prefix);
  const mh = new Uint8Array(34);
  mh[0] = MH_SHA2_256;
  mh[1] = 32;
  mh.set(sha256Sync(buf), 2);
  return base58.encode(mh);
}

/**
 * The relay subscription key of a peer ID (PROTOCOL.md): the first 8 bytes
 * of the peer's digest as a big-endian uint64, shifted right by
 * 64 - prefixBits, back to 8 big-endian bytes, sha256, as a sha2-256
 * multihash, base58. prefixBits defaults to 16, the relay's.
 */
export async function subscriptionKey(peerID, prefixBits = RELAY_PREFIX_BITS) {
  if (!Number.isInteger(prefixBits) || prefixBits < 0 || prefixBits > 64) {
    throw new RangeError(`prefixBits must be an integer from 0 to 64, not ${prefixBits}`);
  }
  return subscriptionKeyOfDigest(await peerDigest(peerID), prefixBits);
}

/** The message ID of ciphertext bytes: lowercase hex sha256. */
export async function messageID(bytes) {
  return hex.encode(sha256Sync(bytes));
}

/** Standard padded base64. */
export function bytesToBase64(bytes) {
  return base64.encode(bytes);
}

/** Decodes standard padded base64; throws on bad input. */
export function base64ToBytes(text) {
  return base64.decode(text);
}

/** The text of bytes if they are valid UTF-8, otherwise null. */
export function utf8OrNull(bytes) {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
}

/** The relay's plain-HTTP description URL (GET /) for its WebSocket URL. */
export function describeURL(wsURL) {
  const u = new URL(wsURL);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  u.pathname = '/';
  u.search = '';
  u.hash = '';
  return u.toString();
}

/**
 * Reconnect delay after `attempt` failures in a row: exponential from base,
 * capped, with jitter (a random point in the upper half), so that clients
 * dropped together by a restart do not come back together.
 */
export function backoff(attempt, { base = 500, cap = 30000, random = Math.random } = {}) {
  const d = Math.min(cap, base * 2 ** Math.min(attempt, 16));
  return Math.round(d / 2 + random() * (d / 2));
}

/**
 * RelayClient keeps one identity connected to one relay: level 2
 * (AuthRequest, the challenge signed in the page, publish results) when the
 * relay offers it, level 1 otherwise. It reconnects by itself with backoff
 * and jitter until stop(), sends again what was published but not answered,
 * and holds publishes made while away until it is subscribed.
 *
 * Callbacks, all optional:
 *   onStatus(state, detail): "connecting", "authenticating", "subscribing",
 *     "subscribed", "waiting" (to reconnect), "stopped", "replaced";
 *   onMessage({id, bytes, encryptedMessage}) for each delivery: call ack(id)
 *     once it is stored or shown;
 *   onResult(ref, {id, status, reason}) for each publish: status
 *     "delivered", "offline", "queued", "rejected" from a level-2 relay, or
 *     "sent" at level 1 (which answers nothing);
 *   onDrained(count) after a level-2 subscribe's replay;
 *   onError(text) for anything a person should read.
 */
export class RelayClient {
  constructor({ identity, url, expectedHost = '', WebSocketImpl = globalThis.WebSocket, fetchImpl = globalThis.fetch?.bind(globalThis), random = Math.random, reconnect = {} } = {}) {
    if (!identity) throw new Error('RelayClient needs an identity');
    const u = new URL(url);
    if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new Error('the relay URL must start with ws:// or wss://');
    this.identity = identity;
    this.url = u.toString();
    this.expectedHost = expectedHost;
    this.state = 'stopped';
    this.level = null; // 1 or 2 once subscribed
    this.description = null; // the relay's GET / answer, when it could be read
    this.attempt = 0;
    this.onStatus = null;
    this.onMessage = null;
    this.onResult = null;
    this.onDrained = null;
    this.onError = null;
    this._WebSocket = WebSocketImpl;
    this._fetch = fetchImpl;
    this._random = random;
    this._reconnect = { base: 500, cap: 30000, ...reconnect };
    this._ws = null;
    this._timer = null;
    this._running = false;
    this._forceLevel1 = false;
    this._outbox = new Map(); // ref → {frame, id}: not yet answered (level 2) or not yet sent
    this._refs = 0;
    this._gen = 0; // bumped by every connect and stop: an older connect in flight gives up
  }

  _status(state, detail = '') {
    this.state = state;
    if (this.onStatus) this.onStatus(state, detail);
  }

  _error(text) {
    if (this.onError) this.onError(text);
  }

  /** Connects, and keeps connecting until stop(). */
  start() {
    if (this._running) return;
    this._running = true;
    this.attempt = 0;
    this._connect();
  }

  /** Closes the connection for good. */
  stop() {
    this._running = false;
    this._gen++;
    clearTimeout(this._timer);
    this._timer = null;
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(1000, 'client stopped');
    this._status('stopped', '');
  }

  /** Closes the current connection and reconnects at once (for a person who does not want to wait). */
  reconnectNow() {
    if (!this._running) return this.start();
    clearTimeout(this._timer);
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(1000, 'reconnecting');
    this._connect();
  }

  async _describe() {
    if (!this._fetch) return null;
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), 5000);
    try {
      const resp = await this._fetch(describeURL(this.url), { signal: ctl.signal, cache: 'no-store' });
      if (!resp.ok) return null;
      return await resp.json();
    } catch {
      return null; // another origin without CORS, or down: the WebSocket will tell
    } finally {
      clearTimeout(t);
    }
  }

  async _connect() {
    const gen = ++this._gen;
    this._timer = null;
    this._status('connecting', this.url);
    const d = await this._describe();
    if (!this._running || gen !== this._gen) return; // stopped, or a newer connect took over
    this.description = d;
    const levels = d && Array.isArray(d.protocol_levels) ? d.protocol_levels : null;
    // Level 2 when the relay says so, or cannot say (then a refusal of the
    // AuthRequest falls back to level 1).
    const level = this._forceLevel1 || (levels && !levels.includes(2)) ? 1 : 2;
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (err) {
      this._scheduleReconnect(`cannot open ${this.url}: ${err.message}`);
      return;
    }
    this._ws = ws;
    const conn = { ws, level, challenged: false, fallback: false, refusal: '' };
    ws.onopen = () => {
      if (this._ws !== ws) return;
      if (level === 2) {
        this._status('authenticating', `as ${this.identity.peerID}`);
        this._send(ws, { Type: 'AuthRequest', Data: { peerID: this.identity.peerID } });
      } else {
        this._subscribeLevel1(ws);
      }
    };
    ws.onmessage = (ev) => {
      if (this._ws === ws) this._frame(conn, ev.data);
    };
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._closed(conn, ev);
    };
  }

  _send(ws, frame) {
    ws.send(JSON.stringify(frame));
  }

  async _subscribeLevel1(ws) {
    this._status('subscribing', 'level 1 (the relay has no authentication)');
    const key = await subscriptionKey(this.identity.peerID);
    if (this._ws !== ws) return;
    this._send(ws, { Type: 'SubscribeMessage', Data: { userID: this.identity.peerID, subscriptionKey: key } });
  }

  _hostExpected(host) {
    if (!host) return false;
    const u = new URL(this.url);
    return [u.hostname, u.host, this.expectedHost].some((h) => h && h.toLowerCase() === host.toLowerCase());
  }

  async _answerChallenge(conn, c) {
    const ws = conn.ws;
    if (!c || typeof c.nonce !== 'string' || typeof c.host !== 'string') {
      conn.refusal = 'the relay sent a malformed challenge';
      ws.close(1000, 'malformed challenge');
      return;
    }
    if (!this._hostExpected(c.host)) {
      // Signing it would let this relay log in elsewhere as us.
      conn.refusal = `the relay asked to sign in to "${c.host}", not to ${new URL(this.url).hostname}: not signed. If this relay really is "${c.host}", open it under that name.`;
      conn.fatal = true;
      ws.close(1000, 'challenge for another host');
      return;
    }
    conn.challenged = true;
    const sig = ob.sign(this.identity, new TextEncoder().encode(ob.authPayload(c.host, c.nonce)));
    const key = await subscriptionKey(this.identity.peerID);
    if (this._ws !== ws) return;
    this._status('subscribing', 'level 2 (signed in)');
    this._send(ws, {
      Type: 'SubscribeMessage',
      Data: {
        userID: this.identity.peerID,
        subscriptionKey: key,
        protocol: 2,
        pubkey: this.identity.publicKeyHex,
        signature: hex.encode(sig),
      },
    });
  }

  _frame(conn, data) {
    if (typeof data !== 'string') return;
    if (data === SUBSCRIBE_OK) {
      this.level = conn.level;
      this.attempt = 0;
      this._status('subscribed', conn.level === 2 ? 'level 2: signed in, publishes confirmed' : 'level 1: no sign-in, publishes not confirmed');
      this._flush(conn.ws);
      return;
    }
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      this._error(`The relay sent something unreadable: ${data.slice(0, 80)}`);
      return;
    }
    if (!f || typeof f !== 'object') return;
    if (typeof f.error === 'string') {
      if (conn.level === 2 && !conn.challenged && this.state === 'authenticating') {
        // A relay without level 2 refuses the AuthRequest: use level 1.
        conn.fallback = true;
        this._forceLevel1 = true;
        conn.ws.close(1000, 'falling back to level 1');
        return;
      }
      if (this.state !== 'subscribed') conn.refusal = `The relay refused the subscription: ${f.error}`;
      else this._error(`Relay: ${f.error}`);
      return;
    }
    if (f.Type === undefined && typeof f.encryptedMessage === 'string') {
      let bytes;
      try {
        bytes = base64.decode(f.encryptedMessage);
      } catch {
        this._error(`The relay delivered message ${f.id} in broken base64: skipped.`);
        return;
      }
      if (this.onMessage) this.onMessage({ id: String(f.id), bytes, encryptedMessage: f.encryptedMessage });
      return;
    }
    switch (f.Type) {
      case 'AuthChallenge':
        this._answerChallenge(conn, f.Data);
        return;
      case 'PublishResult': {
        const r = f.Data || {};
        const entry = this._outbox.get(r.ref);
        if (!entry) return;
        this._outbox.delete(r.ref);
        if (this.onResult) this.onResult(r.ref, { id: r.id || entry.id, status: r.status, reason: r.reason || '' });
        return;
      }
      case 'Drained':
        if (this.onDrained) this.onDrained((f.Data && f.Data.count) || 0);
        return;
      case 'Error':
        this._error(`Relay: ${(f.Data && f.Data.reason) || 'unspecified error'}`);
    }
  }

  _closed(conn, ev) {
    this.level = null;
    if (!this._running) return;
    if (ev.code === CLOSE_REPLACED) {
      this._running = false;
      this._status('replaced', 'this identity connected from another page or device');
      this._error('This identity signed in to the relay from another tab, window or device, which now gets its messages. Reconnect here to take them back.');
      return;
    }
    if (conn.fatal) {
      this._running = false;
      this._status('stopped', conn.refusal);
      this._error(conn.refusal);
      return;
    }
    if (conn.fallback) {
      this._connect(); // at once, at level 1
      return;
    }
    let why = conn.refusal || `connection closed (code ${ev.code}${ev.reason ? ': ' + ev.reason : ''})`;
    if (ev.code === 1006) why = 'cannot reach the relay (or it went away)';
    if (conn.refusal) this._error(conn.refusal);
    if (ev.code === CLOSE_RESTART) this.attempt = 0; // a restart: back soon, with jitter
    this._scheduleReconnect(why);
  }

  _scheduleReconnect(why) {
    if (!this._running) return;
    const wait = backoff(this.attempt, { ...this._reconnect, random: this._random });
    this.attempt++;
    this._status('waiting', `${why}; trying again in ${(wait / 1000).toFixed(1)} s`);
    this._timer = setTimeout(() => this._connect(), wait);
  }

  _flush(ws) {
    for (const [ref, e] of this._outbox) {
      this._send(ws, e.frame);
      if (this.level === 1) {
        // Level 1 answers nothing: sent is all a level-1 client knows.
        this._outbox.delete(ref);
        if (this.onResult) this.onResult(ref, { id: e.id, status: 'sent', reason: '' });
      }
    }
  }

  /**
   * Publishes ciphertext bytes to a peer with "fallback":"relay" (so a
   * bridged relay hands it OFFLINE if the recipient does not take it in
   * time) and returns {id, ref}; the outcome comes to onResult. Sent at once
   * when subscribed, else when the connection is back.
   */
  async publish(recipientPeerID, bytes) {
    ob.parsePeerID(recipientPeerID);
    const id = await messageID(bytes);
    const ref = `m${++this._refs}-${id.slice(0, 8)}`;
    const frame = {
      Type: 'EncryptedMessage',
      Data: { encryptedMessage: base64.encode(bytes), recipient: recipientPeerID, ref, fallback: 'relay' },
    };
    this._outbox.set(ref, { frame, id });
    if (this.state === 'subscribed' && this._ws && this._ws.readyState === 1) {
      this._send(this._ws, frame);
      if (this.level === 1) {
        this._outbox.delete(ref);
        if (this.onResult) queueMicrotask(() => this.onResult(ref, { id, status: 'sent', reason: '' }));
      }
    }
    return { id, ref };
  }

  /** Acks a delivered message: the relay does not send it to this identity again. */
  ack(id) {
    if (!this._ws || this._ws.readyState !== 1) return false; // redelivered after the reconnect, acked then
    this._send(this._ws, { Type: 'AckMessage', Data: { messageID: id } });
    return true;
  }
}
