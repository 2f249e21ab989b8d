// OpenBazaar messages for the browser: identities, and chat messages sealed,
// signed and opened exactly as openbazaar-go (and Courier's devnode, whose
// Go code the tests compare byte for byte) does.
//
// No cryptography is written here: Ed25519 and the Ed25519 → X25519
// conversion come from @noble/curves, hashes from @noble/hashes, nacl box
// from tweetnacl (loaded as a classic script: globalThis.nacl), BIP39 from
// @scure/bip39, base58/base64/hex from @scure/base. What is here is the
// OpenBazaar layout around them, and a small protobuf codec for the three
// messages a chat needs (pb.Envelope, pb.Message, pb.Chat, with
// google.protobuf.Any and Timestamp), written as Go's proto.Marshal does:
// fields in number order, proto3 zero values left out, a set embedded
// message always written. Signatures cover these bytes, so they must be
// canonical.

import { ed25519 } from '@noble/curves/ed25519.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { hmac } from '@noble/hashes/hmac.js';
import { base58, base64, hex } from '@scure/base';
import * as bip39 from '@scure/bip39';
import { wordlist } from '@scure/bip39/wordlists/english.js';

const nacl = globalThis.nacl;
if (!nacl || !nacl.box) throw new Error('tweetnacl is not loaded: index.html loads vendor/tweetnacl/nacl-fast.js first');

export { base58, base64, hex };

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

/** Header of a marshalled libp2p Ed25519 public key: {1: Ed25519, 2: 32 bytes}. */
const PUB_PREFIX = Uint8Array.of(0x08, 0x01, 0x12, 0x20);
/** Header of a marshalled libp2p Ed25519 private key: {1: Ed25519, 2: 64 bytes}. */
const PRIV_PREFIX = Uint8Array.of(0x08, 0x01, 0x12, 0x40);

/** The google.protobuf.Any type URL of a pb.Chat (message.proto has no package). */
export const CHAT_TYPE_URL = 'type.googleapis.com/Chat';
export const TYPE_CHAT = 1;
export const FLAG_MESSAGE = 0;

/** Names of openbazaar-go's pb.Message types, for showing what is not a chat. */
export const MESSAGE_TYPES = {
  0: 'PING', 1: 'CHAT', 2: 'FOLLOW', 3: 'UNFOLLOW', 4: 'ORDER', 5: 'ORDER_REJECT', 6: 'ORDER_CANCEL',
  7: 'ORDER_CONFIRMATION', 8: 'ORDER_FULFILLMENT', 9: 'ORDER_COMPLETION', 10: 'DISPUTE_OPEN',
  11: 'DISPUTE_UPDATE', 12: 'DISPUTE_CLOSE', 13: 'REFUND', 14: 'OFFLINE_ACK', 15: 'OFFLINE_RELAY',
  16: 'MODERATOR_ADD', 17: 'MODERATOR_REMOVE', 18: 'STORE', 19: 'BLOCK', 20: 'VENDOR_FINALIZED_PAYMENT',
  21: 'ORDER_PAYMENT', 500: 'ERROR', 501: 'ORDER_PROCESSING_FAILURE',
};

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let i = 0;
  for (const p of parts) {
    out.set(p, i);
    i += p.length;
  }
  return out;
}

function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

// ---- identities ----------------------------------------------------------

/** The marshalled libp2p form of a raw Ed25519 public key: 08 01 12 20 <key>. */
export function marshalPublicKey(pub) {
  if (pub.length !== 32) throw new Error(`an Ed25519 public key is 32 bytes, not ${pub.length}`);
  return concat(PUB_PREFIX, pub);
}

/** The raw key of a marshalled libp2p Ed25519 public key; throws on anything else. */
export function unmarshalPublicKey(b) {
  if (b.length !== 36 || !equalBytes(b.subarray(0, 4), PUB_PREFIX)) {
    throw new Error('not a marshalled Ed25519 public key (want 36 bytes starting 08011220)');
  }
  return b.slice(4);
}

/** The Qm… peer ID of a raw Ed25519 public key: base58 of the sha2-256 multihash of its marshalled form. */
export function peerIDFromPublicKey(pub) {
  return base58.encode(concat(Uint8Array.of(0x12, 0x20), sha256(marshalPublicKey(pub))));
}

/**
 * Parses a peer ID: {peerID, canonical (Qm… form), pubkey (raw, or null for a
 * Qm… ID, which is only a hash)}. Throws with the reason on anything else.
 */
export function parsePeerID(text) {
  const s = String(text).trim();
  let mh;
  try {
    mh = base58.decode(s);
  } catch {
    throw new Error(`"${s}" is not a peer ID: not base58`);
  }
  if (mh.length === 34 && mh[0] === 0x12 && mh[1] === 0x20) return { peerID: s, canonical: s, pubkey: null };
  if (mh.length === 38 && mh[0] === 0x00 && mh[1] === 36 && equalBytes(mh.subarray(2, 6), PUB_PREFIX)) {
    const pub = mh.slice(6);
    return { peerID: s, canonical: peerIDFromPublicKey(pub), pubkey: pub };
  }
  throw new Error(`"${s}" is not a peer ID: want Qm… (sha2-256) or 12D3Koo… (Ed25519 identity)`);
}

/** The 12D3Koo… (identity multihash) peer ID of a raw Ed25519 public key. */
export function identityPeerID(pub) {
  return base58.encode(concat(Uint8Array.of(0x00, 36), marshalPublicKey(pub)));
}

/**
 * An identity from a 32-byte Ed25519 seed: {seed, publicKey, peerID,
 * identityPeerID, publicKeyHex (marshalled), mnemonic (or null)}.
 */
export function identityFromSeed(seed, mnemonic = null) {
  if (!(seed instanceof Uint8Array) || seed.length !== 32) throw new Error('an Ed25519 seed is 32 bytes');
  const publicKey = ed25519.getPublicKey(seed);
  return {
    seed: Uint8Array.from(seed),
    publicKey,
    peerID: peerIDFromPublicKey(publicKey),
    identityPeerID: identityPeerID(publicKey),
    publicKeyHex: hex.encode(marshalPublicKey(publicKey)),
    mnemonic,
  };
}

/**
 * The identity openbazaar-go restores from a BIP39 mnemonic: the BIP39 seed
 * with the passphrase "Secret Passphrase", HMAC-SHA256 under the key
 * "OpenBazaar seed", used as the Ed25519 seed (ipfs.IdentityKeyFromSeed).
 */
export function identityFromMnemonic(mnemonic) {
  const words = String(mnemonic).trim().toLowerCase().split(/\s+/).join(' ');
  if (!bip39.validateMnemonic(words, wordlist)) {
    throw new Error('the recovery phrase is not a valid BIP39 English mnemonic (check the words and their order)');
  }
  const bip39Seed = bip39.mnemonicToSeedSync(words, 'Secret Passphrase');
  return identityFromSeed(hmac(sha256, utf8.encode('OpenBazaar seed'), bip39Seed), words);
}

/** A new identity, from a new 12-word mnemonic (so that OpenBazaar can restore it too). */
export function generateIdentity() {
  return identityFromMnemonic(bip39.generateMnemonic(wordlist, 128));
}

/** The libp2p marshalled private key (08 01 12 40 | seed | public key), as go-ipfs configs keep it. */
export function marshalPrivateKey(id) {
  return concat(PRIV_PREFIX, id.seed, id.publicKey);
}

/**
 * The identity file devnode and go-ipfs configs use: {"PeerID","PrivKey"},
 * PrivKey the base64 of the marshalled private key.
 */
export function exportIdentity(id) {
  return { PeerID: id.peerID, PrivKey: base64.encode(marshalPrivateKey(id)) };
}

function identityFromMarshalledPrivateKey(b) {
  const ok = (b.length === 68 && b[3] === 64) || (b.length === 100 && b[3] === 96);
  if (!ok || !equalBytes(b.subarray(0, 3), PRIV_PREFIX.subarray(0, 3))) {
    throw new Error('not a marshalled Ed25519 private key (want base64 of 08 01 12 40 and 64 bytes)');
  }
  const id = identityFromSeed(b.slice(4, 36));
  if (!equalBytes(id.publicKey, b.subarray(36, 68))) {
    throw new Error('the private key does not match its own public half');
  }
  return id;
}

/**
 * Imports an identity from what a person pastes: a BIP39 recovery phrase
 * (12 to 24 words, as openbazaar-go shows it), a 64-digit hex Ed25519 seed,
 * the base64 PrivKey of an OpenBazaar/go-ipfs config, or a whole identity
 * file ({"PeerID","PrivKey"}), whose PeerID must match the key.
 */
export function importIdentity(text) {
  const s = String(text).trim();
  if (s === '') throw new Error('nothing to import: paste a recovery phrase, a seed or a key');
  if (s.startsWith('{')) {
    let f;
    try {
      f = JSON.parse(s);
    } catch (err) {
      throw new Error(`the identity file is not JSON: ${err.message}`);
    }
    if (typeof f.PrivKey !== 'string') throw new Error('the identity file has no "PrivKey"');
    const id = importIdentity(f.PrivKey);
    if (f.PeerID && parsePeerID(f.PeerID).canonical !== id.peerID) {
      throw new Error(`the identity file's PeerID ${f.PeerID} is not the peer ID of its key (${id.peerID})`);
    }
    return id;
  }
  if (/\s/.test(s)) return identityFromMnemonic(s);
  if (/^[0-9a-fA-F]{64}$/.test(s)) return identityFromSeed(hex.decode(s.toLowerCase()));
  let b;
  try {
    b = base64.decode(s);
  } catch {
    throw new Error('not a recovery phrase, a 64-digit hex seed, nor a base64 private key');
  }
  return identityFromMarshalledPrivateKey(b);
}

/**
 * Resolves a recipient from a peer ID and, for a Qm… ID (a hash of the key),
 * the public key in hex (raw 32 bytes or marshalled). Returns {peerID,
 * canonical, publicKey}; throws with a reason a person can act on.
 */
export function parseRecipient(peerIDText, pubkeyHex = '') {
  const p = parsePeerID(peerIDText);
  let pub = p.pubkey;
  const k = String(pubkeyHex || '').trim();
  if (k !== '') {
    if (!/^[0-9a-fA-F]+$/.test(k) || k.length % 2) throw new Error('the public key is not hex');
    const b = hex.decode(k.toLowerCase());
    const given = b.length === 32 ? b : unmarshalPublicKey(b);
    if (pub && !equalBytes(pub, given)) throw new Error(`the public key is not the one embedded in ${p.peerID}`);
    pub = given;
  }
  if (!pub) {
    throw new Error(`${p.peerID} is a hash of the key: give the recipient's public key too (they find it in their client, or OpenBazaar's GET /ob/profile)`);
  }
  if (peerIDFromPublicKey(pub) !== p.canonical) {
    throw new Error(`that public key belongs to ${peerIDFromPublicKey(pub)}, not to ${p.peerID}`);
  }
  checkPublicKey(pub);
  return { peerID: p.peerID, canonical: p.canonical, publicKey: pub };
}

/** Throws unless pub is an Ed25519 point that is not of small order (as devnode refuses). */
function checkPublicKey(pub) {
  let pt;
  try {
    pt = ed25519.Point.fromBytes(pub);
  } catch {
    throw new Error('the public key is not a point on the Ed25519 curve');
  }
  if (pt.isSmallOrder()) throw new Error('the public key is a small-order point');
}

// ---- signing -------------------------------------------------------------

/** Signs bytes with an identity: 64 bytes. */
export function sign(id, bytes) {
  return ed25519.sign(bytes, id.seed);
}

/** Verifies an Ed25519 signature, with strict (RFC 8032) encodings as Go's crypto/ed25519. */
export function verify(pub, bytes, sig) {
  try {
    return ed25519.verify(sig, bytes, pub, { zip215: false });
  } catch {
    return false;
  }
}

/** The level-2 auth payload a client signs (PROTOCOL.md). */
export function authPayload(host, nonce) {
  return `courier-auth:v1:${host}:${nonce}`;
}

// ---- protobuf ------------------------------------------------------------

function varint(v) {
  let n = BigInt.asUintN(64, BigInt(v)); // int32 and enums: their int64 sign extension
  const out = [];
  while (n >= 0x80n) {
    out.push(Number(n & 0x7fn) | 0x80);
    n >>= 7n;
  }
  out.push(Number(n));
  return Uint8Array.from(out);
}

const tag = (num, type) => varint((num << 3) | type);
const varintField = (num, v) => (BigInt(v) === 0n ? new Uint8Array(0) : concat(tag(num, 0), varint(v)));
const messageField = (num, b) => concat(tag(num, 2), varint(b.length), b);
const bytesField = (num, b) => (b.length === 0 ? new Uint8Array(0) : messageField(num, b));

/** Walks a serialized message: fn(num, type, value (BigInt, for varints and fixed), data (bytes)). */
function walk(b, fn) {
  let i = 0;
  const readVarint = () => {
    let v = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (i >= b.length) throw new Error('truncated protobuf');
      const c = b[i++];
      v |= BigInt(c & 0x7f) << shift;
      if (c < 0x80) return BigInt.asUintN(64, v);
    }
    throw new Error('varint too long');
  };
  while (i < b.length) {
    const t = readVarint();
    const num = Number(t >> 3n);
    const type = Number(t & 7n);
    if (num === 0 || num > 2 ** 29 - 1) throw new Error(`invalid field number ${num}`);
    let v = 0n;
    let data = null;
    if (type === 0) v = readVarint();
    else if (type === 1 || type === 5) {
      const n = type === 1 ? 8 : 4;
      if (i + n > b.length) throw new Error('truncated protobuf');
      for (let k = n - 1; k >= 0; k--) v = (v << 8n) | BigInt(b[i + k]);
      i += n;
    } else if (type === 2) {
      const len = readVarint();
      if (len > BigInt(b.length - i)) throw new Error('truncated protobuf');
      data = b.subarray(i, i + Number(len));
      i += Number(len);
    } else throw new Error(`field ${num}: unsupported wire type ${type}`);
    fn(num, type, v, data);
  }
}

function want(num, got, type) {
  if (got !== type) throw new Error(`field ${num} has wire type ${got}, want ${type}`);
}

function str(num, data) {
  try {
    return utf8Strict.decode(data);
  } catch {
    throw new Error(`field ${num} is not valid UTF-8`);
  }
}

const int32 = (v) => Number(BigInt.asIntN(32, v));

/** Formats a Timestamp as Go's time.RFC3339Nano in UTC (ptypes.TimestampString): trailing zeros dropped. */
export function rfc3339Nano(seconds, nanos) {
  const base = new Date(seconds * 1000).toISOString().slice(0, 19);
  const frac = nanos ? '.' + String(nanos).padStart(9, '0').replace(/0+$/, '') : '';
  return `${base}${frac}Z`;
}

/** The ID openbazaar-go gives a chat message: base58 sha2-256 multihash of sha256(message + subject + timestamp). */
export function chatMessageID(message, subject, seconds, nanos) {
  return base58.encode(concat(Uint8Array.of(0x12, 0x20), sha256(utf8.encode(message + subject + rfc3339Nano(seconds, nanos)))));
}

/** A chat as openbazaar-go's POST /ob/chat makes it; now is a Date (milliseconds are what a browser has). */
export function newChat(text, subject = '', now = new Date()) {
  const ms = now.getTime();
  const seconds = Math.floor(ms / 1000);
  const nanos = (ms - seconds * 1000) * 1e6;
  return { messageID: chatMessageID(text, subject, seconds, nanos), subject, message: text, seconds, nanos, flag: FLAG_MESSAGE };
}

export function encodeChat(c) {
  const ts = concat(varintField(1, c.seconds), varintField(2, c.nanos));
  return concat(
    bytesField(1, utf8.encode(c.messageID)),
    bytesField(2, utf8.encode(c.subject || '')),
    bytesField(3, utf8.encode(c.message || '')),
    typeof c.seconds === 'number' ? messageField(4, ts) : new Uint8Array(0),
    varintField(5, c.flag || 0),
  );
}

function decodeChat(b) {
  const c = { messageID: '', subject: '', message: '', seconds: 0, nanos: 0, flag: 0 };
  walk(b, (num, type, v, data) => {
    if (num >= 1 && num <= 3) {
      want(num, type, 2);
      c[['messageID', 'subject', 'message'][num - 1]] = str(num, data);
    } else if (num === 4) {
      want(num, type, 2);
      walk(data, (n, t, tv) => {
        if (n === 1 || n === 2) want(n, t, 0);
        if (n === 1) c.seconds = Number(BigInt.asIntN(64, tv));
        if (n === 2) c.nanos = int32(tv);
      });
      if (c.seconds < -62135596800 || c.seconds > 253402300799 || c.nanos < 0 || c.nanos >= 1e9) {
        throw new Error(`timestamp ${c.seconds}.${c.nanos} is out of range`);
      }
    } else if (num === 5) {
      want(num, type, 0);
      c.flag = int32(v);
    }
  });
  return c;
}

/** pb.Message around a payload: {type, typeURL, payload, requestID, isResponse}. */
export function encodeMessage(m) {
  const hasPayload = m.typeURL || (m.payload && m.payload.length);
  const any = hasPayload ? messageField(2, concat(bytesField(1, utf8.encode(m.typeURL || '')), bytesField(2, m.payload || new Uint8Array(0)))) : new Uint8Array(0);
  return concat(varintField(1, m.type || 0), any, varintField(3, m.requestID || 0), m.isResponse ? varintField(4, 1) : new Uint8Array(0));
}

function decodeMessage(b) {
  const m = { type: 0, typeURL: '', payload: new Uint8Array(0), requestID: 0, isResponse: false };
  walk(b, (num, type, v, data) => {
    if (num === 1) {
      want(num, type, 0);
      m.type = int32(v);
    } else if (num === 2) {
      want(num, type, 2);
      walk(data, (n, t, _v, d) => {
        if (n === 1) {
          want(n, t, 2);
          m.typeURL = str(n, d);
        } else if (n === 2) {
          want(n, t, 2);
          m.payload = d;
        }
      });
    } else if (num === 3) {
      want(num, type, 0);
      m.requestID = int32(v);
    } else if (num === 4) {
      want(num, type, 0);
      m.isResponse = v !== 0n;
    }
  });
  return m;
}

/** The signed pb.Envelope around a CHAT message from id: the plaintext that gets sealed. */
export function chatEnvelope(id, chat) {
  const message = encodeMessage({ type: TYPE_CHAT, typeURL: CHAT_TYPE_URL, payload: encodeChat(chat) });
  return concat(messageField(1, message), bytesField(2, marshalPublicKey(id.publicKey)), bytesField(3, sign(id, message)));
}

function decodeEnvelope(b) {
  const e = { message: null, pubkey: new Uint8Array(0), signature: new Uint8Array(0) };
  walk(b, (num, type, _v, data) => {
    if (num < 1 || num > 3) return;
    want(num, type, 2);
    if (num === 1) {
      // The signature covers one serialization: take exactly one.
      if (e.message) throw new Error('envelope has more than one message');
      e.message = data;
    } else if (num === 2) e.pubkey = data;
    else e.signature = data;
  });
  if (!e.message) throw new Error('envelope has no message');
  return e;
}

// ---- sealing ---------------------------------------------------------------

const NONCE = 24;
const EPH = 32;

/** The X25519 public key of an Ed25519 public key (libsodium's crypto_sign_ed25519_pk_to_curve25519). */
export function x25519PublicKey(pub) {
  checkPublicKey(pub);
  return ed25519.utils.toMontgomery(pub);
}

/** The X25519 secret key of an identity (sha512(seed)[:32], clamped). */
export function x25519SecretKey(id) {
  return ed25519.utils.toMontgomerySecret(id.seed);
}

/** Seals plaintext to an Ed25519 public key: nonce(24) | ephemeral X25519 public key(32) | nacl box. */
export function encrypt(recipientPub, plaintext) {
  const peer = x25519PublicKey(recipientPub);
  const eph = nacl.box.keyPair();
  const nonce = nacl.randomBytes(NONCE);
  const boxed = nacl.box(plaintext, nonce, peer, eph.secretKey);
  eph.secretKey.fill(0);
  return concat(nonce, eph.publicKey, boxed);
}

/** Opens what encrypt sealed to id; throws when it does not open. */
export function decrypt(id, ciphertext) {
  if (ciphertext.length < NONCE + EPH + nacl.box.overheadLength) {
    throw new Error('too short to be a sealed message');
  }
  const key = x25519SecretKey(id);
  const plain = nacl.box.open(ciphertext.subarray(NONCE + EPH), ciphertext.subarray(0, NONCE), ciphertext.subarray(NONCE, NONCE + EPH), key);
  key.fill(0);
  if (!plain) {
    const err = new Error('does not open with this identity: sealed to someone else, or altered on the way');
    err.notForUs = true;
    throw err;
  }
  return plain;
}

/** A chat message from id to a recipient public key, sealed as openbazaar-go sends it. Returns {ciphertext, chat}. */
export function sealChat(id, recipientPub, text, subject = '', now = new Date()) {
  const chat = newChat(text, subject, now);
  return { ciphertext: encrypt(recipientPub, chatEnvelope(id, chat)), chat };
}

/**
 * Opens a ciphertext sealed to id and checks the Envelope's signature over
 * the Message bytes exactly as they appear, with the sender key it carries,
 * as devnode and openbazaar-go do. Returns {sender, senderPubKeyHex, type,
 * typeName, chat (for CHAT), text}. Throws with the reason otherwise.
 */
export function openMessage(id, ciphertext) {
  const plain = decrypt(id, ciphertext);
  let env;
  try {
    env = decodeEnvelope(plain);
  } catch (err) {
    throw new Error(`malformed envelope: ${err.message}`);
  }
  let pub;
  try {
    pub = unmarshalPublicKey(env.pubkey);
  } catch (err) {
    throw new Error(`malformed envelope: sender key: ${err.message}`);
  }
  if (!verify(pub, env.message, env.signature)) throw new Error("the sender's signature does not verify: not opened");
  let m;
  try {
    m = decodeMessage(env.message);
  } catch (err) {
    throw new Error(`malformed message: ${err.message}`);
  }
  const out = {
    sender: peerIDFromPublicKey(pub),
    senderPubKeyHex: hex.encode(env.pubkey),
    type: m.type,
    typeName: MESSAGE_TYPES[m.type] || String(m.type),
    chat: null,
    text: '',
  };
  if (m.type === TYPE_CHAT) {
    if (m.typeURL !== CHAT_TYPE_URL) throw new Error(`malformed message: CHAT payload has type URL "${m.typeURL}"`);
    try {
      out.chat = decodeChat(m.payload);
    } catch (err) {
      throw new Error(`malformed chat: ${err.message}`);
    }
    out.text = out.chat.message;
  }
  return out;
}
