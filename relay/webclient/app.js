// The page of the Courier light client: an identity, a relay connection
// (RelayClient) and a conversation list. window.courier exposes the state
// and the libraries, for tests and for the browser console.

import * as lib from './client.js';
import * as ob from './ob.js';

const $ = (id) => document.getElementById(id);

// What the page keeps in localStorage, only with the person's consent.
const STORE_IDENTITY = 'courier.identity';
const STORE_SETTINGS = 'courier.settings';
const STORE_MESSAGES = 'courier.messages';
const MAX_STORED_MESSAGES = 500;

const state = {
  identity: null,
  remember: false,
  client: null,
  messages: [], // {dir: "in"|"out", id, peer, text, at, status, reason, error, typeName}
  byID: new Map(), // message ID → {entry, li}
  byRef: new Map(), // publish ref → entry
};

window.courier = {
  lib, ob, state, errors: [],
  get identity() { return state.identity; },
  get client() { return state.client; },
  get messages() { return state.messages; },
};
window.addEventListener('error', (ev) => window.courier.errors.push(`uncaught: ${ev.message}`));
window.addEventListener('unhandledrejection', (ev) => window.courier.errors.push(`unhandled rejection: ${ev.reason}`));

// ---- storage (consent only) --------------------------------------------------

function store(key, value) {
  if (!state.remember) return;
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (err) {
    showError(`Cannot save in this browser's storage (${err.message}): the page will forget on reload.`);
  }
}

function load(key) {
  try {
    return JSON.parse(localStorage.getItem(key) || 'null');
  } catch {
    return null;
  }
}

function wipeStorage() {
  for (const k of [STORE_IDENTITY, STORE_SETTINGS, STORE_MESSAGES]) {
    try {
      localStorage.removeItem(k);
    } catch {
      // storage disabled: nothing was kept
    }
  }
}

function saveMessages() {
  store(STORE_MESSAGES, state.messages.slice(-MAX_STORED_MESSAGES));
}

// ---- status and errors -----------------------------------------------------------

const STATE_TEXT = {
  stopped: 'Not connected',
  connecting: 'Connecting to the relay',
  authenticating: 'Signing in to the relay',
  subscribing: 'Subscribing',
  subscribed: 'Connected',
  waiting: 'Connection lost',
  replaced: 'Disconnected',
};

function showStatus(s, detail) {
  $('status').dataset.state = s;
  const text = STATE_TEXT[s] || s;
  $('status-text').textContent = detail ? `${text}: ${detail}.` : `${text}.`;
  $('disconnect').disabled = s === 'stopped' || s === 'replaced';
  $('connect').textContent = s === 'stopped' || s === 'replaced' ? 'Connect' : 'Reconnect now';
  if (s === 'subscribed') flushWaiting();
}

function showError(message) {
  window.courier.errors.push(message);
  const el = $('alert');
  el.textContent = message;
  el.hidden = false;
}

function clearError() {
  $('alert').hidden = true;
  $('alert').textContent = '';
}

// ---- identity --------------------------------------------------------------------

function setIdentity(id, { persist }) {
  state.identity = id;
  if (persist) {
    state.remember = true;
    const f = ob.exportIdentity(id);
    store(STORE_IDENTITY, { ...f, Mnemonic: id.mnemonic || undefined });
  }
  $('no-identity').hidden = true;
  $('has-identity').hidden = false;
  $('export-box').hidden = true;
  $('my-peer-id').textContent = id.peerID;
  $('my-pubkey').textContent = id.publicKeyHex;
  $('stored-where').textContent = state.remember
    ? 'In this browser\'s local storage, with your consent. "Forget identity" removes it.'
    : 'Only in this page: it is gone when you close or reload it. Export it to keep it.';
}

function forgetIdentity() {
  if (!confirm('Forget this identity in this browser? Without an export or the recovery phrase it cannot be recovered.')) return;
  if (state.client) state.client.stop();
  state.client = null;
  state.identity = null;
  state.remember = false;
  wipeStorage();
  state.messages.length = 0;
  state.byID.clear();
  state.byRef.clear();
  $('messages').replaceChildren();
  $('messages-empty').hidden = false;
  $('has-identity').hidden = true;
  $('no-identity').hidden = false;
  $('remember').checked = false;
  showStatus('stopped', '');
}

function showExport() {
  const id = state.identity;
  const file = JSON.stringify(ob.exportIdentity(id), null, 2);
  $('export-file').textContent = file;
  $('export-mnemonic').textContent = id.mnemonic || '';
  $('export-mnemonic-row').hidden = !id.mnemonic;
  const a = $('export-download');
  if (a.href.startsWith('blob:')) URL.revokeObjectURL(a.href);
  a.href = URL.createObjectURL(new Blob([file + '\n'], { type: 'application/json' }));
  $('export-box').hidden = !$('export-box').hidden;
}

// ---- messages ----------------------------------------------------------------------

const STATUS_TEXT = {
  sealing: 'Sealing…',
  waiting: 'Waiting for the relay connection…',
  sending: 'Sending…',
  delivered: 'Delivered: their client has it.',
  offline: 'Not confirmed in time, so the relay also handed it to the OFFLINE network: a node picks it up at its next poll (OpenBazaar polls every minute); the relay keeps it too and delivers it if they connect here.',
  queued: 'Queued at the relay: it reaches them when they connect.',
  rejected: 'Rejected by the relay',
  sent: 'Sent (this relay confirms nothing at protocol level 1).',
};

function shortPeer(p) {
  return p.length > 16 ? `${p.slice(0, 8)}…${p.slice(-6)}` : p;
}

function renderEntry(e) {
  const li = document.createElement('li');
  li.className = `msg ${e.dir}`;
  li.dataset.id = e.id || '';
  const head = document.createElement('div');
  head.className = 'head';
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = e.dir === 'in' ? `From ${shortPeer(e.peer || 'unknown sender')}` : `To ${shortPeer(e.peer)}`;
  who.title = e.peer || '';
  const time = document.createElement('time');
  time.dateTime = e.at;
  time.textContent = new Date(e.at).toLocaleString();
  head.append(who, time);
  const body = document.createElement('p');
  body.className = 'text';
  if (e.error) {
    body.classList.add('unreadable');
    body.textContent = `Could not open this message: ${e.error}`;
  } else if (e.typeName && e.typeName !== 'CHAT') {
    body.classList.add('other');
    body.textContent = `An OpenBazaar ${e.typeName} message: open it in OpenBazaar; this client shows chat only.`;
  } else {
    body.textContent = e.text;
  }
  li.append(head, body);
  if (e.dir === 'in' && e.peer && !e.error) {
    // The Envelope carried the sender's key: a reply needs nothing typed.
    const reply = document.createElement('button');
    reply.type = 'button';
    reply.className = 'small secondary reply';
    reply.textContent = 'Reply';
    reply.setAttribute('aria-label', `Reply to ${e.peer}`);
    reply.addEventListener('click', () => {
      $('to-peer').value = e.peer;
      $('to-pubkey').value = e.senderPubKey || '';
      $('text').focus();
    });
    li.append(reply);
  }
  if (e.dir === 'out') {
    const st = document.createElement('p');
    st.className = 'state';
    li.append(st);
  }
  updateEntry(e, li);
  return li;
}

function updateEntry(e, li) {
  li.dataset.status = e.status || '';
  const st = li.querySelector('.state');
  if (!st) return;
  let t = STATUS_TEXT[e.status] || e.status;
  if (e.reason) t += `: ${e.reason}`;
  st.textContent = t;
}

function addEntry(e) {
  state.messages.push(e);
  const li = renderEntry(e);
  $('messages').prepend(li);
  $('messages-empty').hidden = true;
  if (e.id) state.byID.set(e.id, { entry: e, li });
  return li;
}

function setStatus(e, status, reason = '') {
  e.status = status;
  e.reason = reason;
  const item = state.byID.get(e.id);
  if (item) updateEntry(e, item.li);
  saveMessages();
}

/** A delivery from the relay: open it, show it, keep it (with consent), then ack it. */
async function received(msg) {
  const c = state.client;
  const id = msg.id;
  if ((await lib.messageID(msg.bytes)) !== id) {
    showError(`The relay delivered a message under the wrong ID (${id.slice(0, 12)}…): not shown, not acked.`);
    return;
  }
  const known = state.byID.get(id);
  if (known) {
    if (c) c.ack(id); // sent again: the earlier ack was lost
    return;
  }
  let e;
  try {
    const m = ob.openMessage(state.identity, msg.bytes);
    if (m.chat && m.chat.flag !== ob.FLAG_MESSAGE) {
      // "typing…" and "read" notices: nothing to show or keep.
      if (c) c.ack(id);
      return;
    }
    const at = m.chat ? new Date(m.chat.seconds * 1000 + Math.floor(m.chat.nanos / 1e6)) : new Date();
    e = { dir: 'in', id, peer: m.sender, senderPubKey: m.senderPubKeyHex, text: m.text, typeName: m.typeName, at: at.toISOString(), receivedAt: new Date().toISOString() };
  } catch (err) {
    if (err.notForUs && c && c.level === 1) {
      // At level 1 the relay sends everything under the subscription key,
      // which peers whose IDs share its prefix share: not for us, not shown.
      c.ack(id);
      return;
    }
    e = { dir: 'in', id, peer: '', error: err.message, at: new Date().toISOString() };
  }
  addEntry(e);
  saveMessages();
  // Shown (and stored, where allowed): the relay may forget it. Not
  // connected: the relay sends it again after the reconnect, acked then.
  e.acked = c ? c.ack(id) : false;
}

function flushWaiting() {
  for (const e of state.messages) {
    if (e.dir === 'out' && e.status === 'waiting') setStatus(e, 'sending');
  }
}

async function send(ev) {
  ev.preventDefault();
  clearError();
  if (!state.identity) {
    showError('Create or import an identity first (step 1).');
    return;
  }
  if (!state.client) {
    showError('Connect to a relay first (step 2).');
    return;
  }
  let to;
  try {
    to = ob.parseRecipient($('to-peer').value, $('to-pubkey').value);
  } catch (err) {
    showError(`Cannot send: ${err.message}`);
    return;
  }
  const text = $('text').value;
  if (text.trim() === '') {
    showError('Cannot send an empty message.');
    return;
  }
  const { ciphertext } = ob.sealChat(state.identity, to.publicKey, text);
  const e = { dir: 'out', id: '', peer: to.peerID, text, at: new Date().toISOString(), status: 'sealing' };
  const { id, ref } = await state.client.publish(to.peerID, ciphertext);
  e.id = id;
  e.ref = ref;
  e.status = state.client.state === 'subscribed' ? 'sending' : 'waiting';
  state.byRef.set(ref, e);
  addEntry(e);
  saveMessages();
  $('text').value = '';
}

function result(ref, r) {
  const e = state.byRef.get(ref);
  if (!e) return;
  state.byRef.delete(ref);
  setStatus(e, r.status, r.reason);
}

// ---- relay ---------------------------------------------------------------------------

function defaultRelayURL() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return location.host ? `${scheme}//${location.host}/` : '';
}

function connect(ev) {
  if (ev) ev.preventDefault();
  clearError();
  if (!state.identity) {
    showError('Create or import an identity first (step 1): the relay needs to know whose messages to give you.');
    return;
  }
  const url = $('relay-url').value.trim();
  let same = false;
  try {
    same = state.client && state.client.url === new URL(url).toString();
  } catch {
    // not a URL: RelayClient says so below
  }
  if (same && state.client.state !== 'stopped' && state.client.state !== 'replaced') {
    state.client.reconnectNow();
    return;
  }
  if (state.client) state.client.stop();
  let c;
  try {
    c = new lib.RelayClient({ identity: state.identity, url });
  } catch (err) {
    showError(`Relay URL: ${err.message}.`);
    return;
  }
  c.onStatus = showStatus;
  c.onMessage = received;
  c.onResult = result;
  c.onError = showError;
  c.onDrained = () => {};
  state.client = c;
  store(STORE_SETTINGS, { relayURL: url });
  c.start();
}

function disconnect() {
  if (state.client) state.client.stop();
}

// ---- wiring ----------------------------------------------------------------------------

function start() {
  $('relay-url').value = defaultRelayURL();
  const saved = load(STORE_IDENTITY);
  if (saved) {
    try {
      const id = ob.importIdentity(JSON.stringify({ PeerID: saved.PeerID, PrivKey: saved.PrivKey }));
      if (saved.Mnemonic) id.mnemonic = saved.Mnemonic;
      state.remember = true;
      $('remember').checked = true;
      setIdentity(id, { persist: false });
      const settings = load(STORE_SETTINGS);
      if (settings && settings.relayURL) $('relay-url').value = settings.relayURL;
      for (const e of load(STORE_MESSAGES) || []) {
        if (e && e.id && !state.byID.has(e.id)) {
          if (e.dir === 'out' && (e.status === 'sending' || e.status === 'waiting' || e.status === 'sealing')) {
            e.status = 'unknown';
            e.reason = 'the page was closed before the relay answered';
          }
          addEntry(e);
        }
      }
    } catch (err) {
      showError(`The identity saved in this browser cannot be used (${err.message}). Import it again, or create a new one.`);
    }
  }

  $('create').addEventListener('click', () => {
    clearError();
    const id = ob.generateIdentity();
    setIdentity(id, { persist: $('remember').checked });
    if ($('relay-url').value) connect();
  });
  $('import-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    clearError();
    try {
      const id = ob.importIdentity($('import-text').value);
      $('import-text').value = '';
      setIdentity(id, { persist: $('remember').checked });
      if ($('relay-url').value) connect();
    } catch (err) {
      showError(`Cannot import: ${err.message}.`);
    }
  });
  $('export').addEventListener('click', showExport);
  $('forget').addEventListener('click', forgetIdentity);
  $('relay-form').addEventListener('submit', connect);
  $('disconnect').addEventListener('click', disconnect);
  $('compose-form').addEventListener('submit', (ev) => send(ev).catch((err) => showError(`Cannot send: ${err.message}`)));
  for (const b of document.querySelectorAll('button.copy')) {
    b.addEventListener('click', () => {
      const text = $(b.dataset.copy).textContent;
      navigator.clipboard?.writeText(text).then(() => { b.textContent = 'Copied'; }, () => showError('Copying needs https or localhost; select the text instead.'));
    });
  }
  showStatus('stopped', '');
  if (state.identity && $('relay-url').value) connect();
  window.courier.ready = true;
}

start();
