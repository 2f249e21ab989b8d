// Courier relay protocol, level 1, for browsers: the light-client side of
// PROTOCOL.md ("Identities and keys" and "Relay wire protocol").
//
// A plain ES module with no dependencies: it runs as served, without a build
// step, and everything a test needs is exported. Hashing uses WebCrypto,
// which browsers offer only in secure contexts (https, or http://localhost
// and loopback addresses).

const BASE58_ALPHABET = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';
const BASE58_INDEX = new Map([...BASE58_ALPHABET].map((c, i) => [c, i]));

/** Multihash codes a peer ID may use. */
export const MH_IDENTITY = 0x00;
export const MH_SHA2_256 = 0x12;

/** The prefix length the relay protocol uses for subscription keys. */
export const RELAY_PREFIX_BITS = 16;

/** The exact success answer to a subscribe; compared as a string. */
export const SUBSCRIBE_OK = '{"subscribe": true}';

// Protobuf header of a marshalled libp2p Ed25519 public key:
// field 1 KeyType = Ed25519 (1), field 2 bytes of length 32.
const ED25519_KEY_PREFIX = [0x08, 0x01, 0x12, 0x20];
const ED25519_KEY_LEN = ED25519_KEY_PREFIX.length + 32;

/** Encodes bytes (Uint8Array) as base58 (Bitcoin alphabet, as libp2p uses). */
export function base58Encode(bytes) {
  let zeros = 0;
  while (zeros < bytes.length && bytes[zeros] === 0) zeros++;
  const digits = []; // base-58 digits, least significant first
  for (let i = zeros; i < bytes.length; i++) {
    let carry = bytes[i];
    for (let j = 0; j < digits.length; j++) {
      carry += digits[j] << 8;
      digits[j] = carry % 58;
      carry = (carry / 58) | 0;
    }
    while (carry > 0) {
      digits.push(carry % 58);
      carry = (carry / 58) | 0;
    }
  }
  let out = '1'.repeat(zeros);
  for (let i = digits.length - 1; i >= 0; i--) out += BASE58_ALPHABET[digits[i]];
  return out;
}

/** Decodes base58 into a Uint8Array; throws on a character outside the alphabet. */
export function base58Decode(text) {
  if (typeof text !== 'string') throw new TypeError('base58Decode: want a string');
  let zeros = 0;
  while (zeros < text.length && text[zeros] === '1') zeros++;
  const bytes = []; // base-256 digits, least significant first
  for (let i = zeros; i < text.length; i++) {
    let carry = BASE58_INDEX.get(text[i]);
    if (carry === undefined) {
      throw new Error(`not base58: ${JSON.stringify(text[i])} at position ${i}`);
    }
    for (let j = 0; j < bytes.length; j++) {
      carry += bytes[j] * 58;
      bytes[j] = carry & 0xff;
      carry >>= 8;
    }
    while (carry > 0) {
      bytes.push(carry & 0xff);
      carry >>= 8;
    }
  }
  const out = new Uint8Array(zeros + bytes.length);
  for (let i = 0; i < bytes.length; i++) out[out.length - 1 - i] = bytes[i];
  return out;
}

/**
 * Parses a binary multihash with a one-byte code and a one-byte length (all
 * that peer IDs and subscription keys use) into {code, length, digest}.
 * Throws when the length does not match.
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

/** Returns the sha256 of bytes as a Uint8Array (WebCrypto). */
export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
}

/** Lowercase hex of bytes. */
export function toHex(bytes) {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

/**
 * Returns the 32-byte digest a peer ID's subscription key is derived from:
 * the sha2-256 digest of a Qm… ID, or the sha256 of the marshalled key of an
 * identity-multihash (12D3Koo…) ID, which is the same for both forms of one
 * peer. Throws on anything that is not a peer ID.
 */
export async function peerDigest(peerID) {
  let mh;
  try {
    mh = parseMultihash(base58Decode(peerID));
  } catch (err) {
    throw new Error(`invalid peer ID ${JSON.stringify(peerID)}: ${err.message}`);
  }
  if (mh.code === MH_SHA2_256 && mh.length === 32) return mh.digest;
  if (mh.code === MH_IDENTITY && mh.length === ED25519_KEY_LEN &&
      ED25519_KEY_PREFIX.every((b, i) => mh.digest[i] === b)) {
    return sha256(mh.digest);
  }
  throw new Error(`invalid peer ID ${JSON.stringify(peerID)}: neither a sha2-256 (Qm…) nor an Ed25519 identity (12D3Koo…) multihash`);
}

/**
 * Returns the relay subscription key of a peer ID (PROTOCOL.md): the first 8
 * bytes of the peer's digest as a big-endian uint64, shifted right by
 * 64 - prefixBits, written back as 8 big-endian bytes, sha256, wrapped as a
 * sha2-256 multihash, base58. prefixBits defaults to 16, the relay's.
 */
export async function subscriptionKey(peerID, prefixBits = RELAY_PREFIX_BITS) {
  if (!Number.isInteger(prefixBits) || prefixBits < 0 || prefixBits > 64) {
    throw new RangeError(`prefixBits must be an integer from 0 to 64, not ${prefixBits}`);
  }
  const digest = await peerDigest(peerID);
  const view = new DataView(digest.buffer, digest.byteOffset, 8);
  const prefix = view.getBigUint64(0) >> BigInt(64 - prefixBits);
  const buf = new Uint8Array(8);
  new DataView(buf.buffer).setBigUint64(0, prefix);
  const sum = await sha256(buf);
  const mh = new Uint8Array(2 + sum.length);
  mh[0] = MH_SHA2_256;
  mh[1] = sum.length;
  mh.set(sum, 2);
  return base58Encode(mh);
}

/** Returns the message ID of ciphertext bytes: lowercase hex sha256. */
export async function messageID(bytes) {
  return toHex(await sha256(bytes));
}

/** Encodes bytes as standard padded base64. */
export function bytesToBase64(bytes) {
  if (typeof bytes.toBase64 === 'function') return bytes.toBase64();
  let bin = '';
  const chunk = 0x8000; // keeps String.fromCharCode's argument count small
  for (let i = 0; i < bytes.length; i += chunk) {
    bin += String.fromCharCode.apply(null, bytes.subarray(i, i + chunk));
  }
  return btoa(bin);
}

/** Decodes standard padded base64 into a Uint8Array; throws on bad input. */
export function base64ToBytes(text) {
  if (typeof Uint8Array.fromBase64 === 'function') return Uint8Array.fromBase64(text);
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** Returns the text of bytes if they are valid UTF-8, otherwise null. */
export function utf8OrNull(bytes) {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
}

/**
 * RelayClient is one level-1 connection to a Courier relay.
 *
 * Callbacks, all optional and settable at any time:
 *   onMessage({id, bytes, encryptedMessage, receivedAt}) for each delivery,
 *   in the order the relay sent them;
 *   onStatus(state, detail) on every state change;
 *   onError(reason) for an {"error": …} answer outside a subscribe (for
 *   instance a publish that was too large).
 *
 * state is one of "disconnected", "connecting", "connected", "subscribing",
 * "subscribed".
 */
export class RelayClient {
  constructor({ onMessage = null, onStatus = null, onError = null, WebSocketImpl = globalThis.WebSocket } = {}) {
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.onError = onError;
    this.state = 'disconnected';
    this.url = null;
    this._WebSocket = WebSocketImpl;
    this._ws = null;
    this._pendingSubscribe = null; // {resolve, reject} while waiting for the answer
  }

  _setState(state, detail = '') {
    this.state = state;
    if (this.onStatus) this.onStatus(state, detail);
  }

  /** Opens the WebSocket; resolves once it is open. Closes an earlier connection. */
  connect(url) {
    this.close();
    this.url = url;
    this._setState('connecting', url);
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new this._WebSocket(url);
      } catch (err) {
        this._setState('disconnected', err.message);
        reject(err);
        return;
      }
      this._ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        this._setState('connected', url);
        resolve();
      };
      ws.onmessage = (ev) => this._handleFrame(ev.data);
      ws.onerror = () => {
        // The browser gives no reason here; onclose follows with a code.
      };
      ws.onclose = (ev) => {
        if (this._ws !== ws) return; // an older connection that we replaced
        this._ws = null;
        const detail = `closed (code ${ev.code}${ev.reason ? ': ' + ev.reason : ''})`;
        this._failSubscribe(new Error(`connection ${detail}`));
        this._setState('disconnected', detail);
        if (!opened) reject(new Error(`cannot connect to ${url}: ${detail}`));
      };
    });
  }

  /** Closes the connection, if any. */
  close(code = 1000, reason = '') {
    const ws = this._ws;
    if (!ws) return;
    this._ws = null;
    this._failSubscribe(new Error('connection closed by the client'));
    ws.close(code, reason);
    this._setState('disconnected', 'closed by the client');
  }

  /**
   * Subscribes at level 1. Resolves when the relay answers exactly
   * {"subscribe": true}; rejects with the relay's reason on {"error": …}
   * (the relay then closes) or when the connection closes first. Stored
   * messages follow the answer and go to onMessage.
   */
  subscribe(userID, subscriptionKey) {
    if (!this._ws || this._ws.readyState !== 1) {
      return Promise.reject(new Error('not connected'));
    }
    if (this._pendingSubscribe) return Promise.reject(new Error('a subscribe is already waiting for its answer'));
    return new Promise((resolve, reject) => {
      this._pendingSubscribe = { resolve, reject };
      this._setState('subscribing', subscriptionKey);
      this._send({ Type: 'SubscribeMessage', Data: { userID, subscriptionKey } });
    });
  }

  /** Acks a delivered message: the relay never sends it to this userID again. */
  ack(id) {
    this._send({ Type: 'AckMessage', Data: { messageID: id } });
  }

  /**
   * Publishes bytes (Uint8Array) to a peer and resolves to the message ID.
   * Level 1 gets no answer on success; an {"error": …} goes to onError.
   */
  async publish(recipientPeerID, bytes) {
    const id = await messageID(bytes);
    this._send({
      Type: 'EncryptedMessage',
      Data: { encryptedMessage: bytesToBase64(bytes), recipient: recipientPeerID },
    });
    return id;
  }

  _send(frame) {
    if (!this._ws || this._ws.readyState !== 1) throw new Error('not connected');
    this._ws.send(JSON.stringify(frame));
  }

  _failSubscribe(err) {
    const p = this._pendingSubscribe;
    this._pendingSubscribe = null;
    if (p) p.reject(err);
  }

  _handleFrame(data) {
    if (typeof data !== 'string') return; // the protocol uses text frames only
    if (data === SUBSCRIBE_OK) {
      const p = this._pendingSubscribe;
      this._pendingSubscribe = null;
      this._setState('subscribed', '');
      if (p) p.resolve();
      return;
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this._report(`unparseable frame from the relay: ${data.slice(0, 80)}`);
      return;
    }
    if (frame === null || typeof frame !== 'object') {
      this._report(`unexpected frame from the relay: ${data.slice(0, 80)}`);
      return;
    }
    if (typeof frame.error === 'string') {
      if (this._pendingSubscribe) {
        this._failSubscribe(new Error(`relay refused the subscription: ${frame.error}`));
      } else {
        this._report(frame.error);
      }
      return;
    }
    if (frame.Type === undefined && typeof frame.encryptedMessage === 'string') {
      let bytes;
      try {
        bytes = base64ToBytes(frame.encryptedMessage);
      } catch {
        this._report(`delivery ${frame.id} is not valid base64`);
        return;
      }
      if (this.onMessage) {
        this.onMessage({ id: String(frame.id), bytes, encryptedMessage: frame.encryptedMessage, receivedAt: new Date() });
      }
      return;
    }
    if ('subscribe' in frame && this._pendingSubscribe) {
      // Not the exact bytes a level-1 relay sends: refuse to guess.
      this._failSubscribe(new Error(`unexpected subscribe answer: ${data.slice(0, 80)}`));
      return;
    }
    // Anything else (level-2 frames are never sent to level-1 connections) is ignored.
  }

  _report(reason) {
    if (this.onError) this.onError(reason);
  }
}
