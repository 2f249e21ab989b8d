// The page of the Courier web client: wires the forms of index.html to a
// RelayClient. window.courier exposes the client, the library and what
// arrived, for tests and for the console.

import * as lib from './client.js';

const $ = (id) => document.getElementById(id);

const client = new lib.RelayClient();
const received = []; // {id, size, text, receivedAt, acked}, in arrival order
const published = []; // {id, recipient, size, publishedAt}
const byID = new Map(); // message ID → {entry, row}

window.courier = { client, lib, received, published, errors: [] };

// Anything that goes wrong unseen lands in courier.errors too, for tests.
window.addEventListener('error', (ev) => window.courier.errors.push(`uncaught: ${ev.message}`));
window.addEventListener('unhandledrejection', (ev) => window.courier.errors.push(`unhandled rejection: ${ev.reason}`));

const SETTINGS_KEY = 'courier.webclient';

function defaultRelayURL() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/`;
}

function loadSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || '{}');
  } catch {
    // Storage disabled or garbage: start from the defaults.
  }
  $('relay-url').value = saved.relayURL || (location.host ? defaultRelayURL() : '');
  $('peer-id').value = saved.peerID || '';
  $('user-id').value = saved.userID || '';
}

function saveSettings() {
  try {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify({
      relayURL: $('relay-url').value.trim(),
      peerID: $('peer-id').value.trim(),
      userID: $('user-id').value.trim(),
    }));
  } catch {
    // Not fatal: the page just forgets the fields.
  }
}

const STATE_TEXT = {
  disconnected: 'Disconnected',
  connecting: 'Connecting to',
  connected: 'Connected to',
  subscribing: 'Subscribing with key',
  subscribed: 'Subscribed',
};

function showStatus(state, detail) {
  $('status').dataset.state = state;
  const text = STATE_TEXT[state] || state;
  $('status-text').textContent = detail ? `${text}: ${detail}` : `${text}.`;
  const connected = state !== 'disconnected' && state !== 'connecting';
  $('disconnect').disabled = !connected;
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

function formatSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function cell(className, content) {
  const td = document.createElement('td');
  if (className) td.className = className;
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  return td;
}

function ackMessage(id) {
  const item = byID.get(id);
  if (!item || item.entry.acked) return;
  try {
    client.ack(id);
  } catch (err) {
    showError(`Cannot ack ${id}: ${err.message}`);
    return;
  }
  item.entry.acked = true;
  const ackCell = item.row.querySelector('td.acked');
  ackCell.textContent = 'yes';
}

function showMessage(msg) {
  const known = byID.get(msg.id);
  if (known) {
    // Sent again (not acked yet, or a second subscription): one row is enough.
    if (!known.entry.acked && $('auto-ack').checked) ackMessage(msg.id);
    return;
  }
  const text = lib.utf8OrNull(msg.bytes);
  const entry = {
    id: msg.id,
    size: msg.bytes.length,
    text,
    encryptedMessage: msg.encryptedMessage, // the bytes as the relay sent them (base64)
    receivedAt: msg.receivedAt.toISOString(),
    acked: false,
  };

  const row = document.createElement('tr');
  row.dataset.id = msg.id;
  const time = document.createElement('time');
  time.dateTime = entry.receivedAt;
  time.textContent = msg.receivedAt.toLocaleTimeString();
  const code = document.createElement('code');
  code.textContent = msg.id;
  let textContent;
  if (text === null) {
    textContent = document.createElement('span');
    textContent.className = 'binary';
    textContent.textContent = '(binary, not UTF-8)';
  } else {
    textContent = text;
  }
  const ackButton = document.createElement('button');
  ackButton.type = 'button';
  ackButton.className = 'small';
  ackButton.textContent = 'Ack';
  ackButton.setAttribute('aria-label', `Ack message ${msg.id.slice(0, 12)}`);
  ackButton.addEventListener('click', () => ackMessage(msg.id));
  row.append(
    cell('time', time),
    cell('id', code),
    cell('size', formatSize(entry.size)),
    cell('text', textContent),
    cell('acked', ackButton),
  );
  $('message-rows').prepend(row);
  $('messages').hidden = false;
  $('messages-empty').hidden = true;

  byID.set(msg.id, { entry, row });
  received.push(entry);
  if ($('auto-ack').checked) ackMessage(msg.id); // shown: ack it
}

client.onStatus = showStatus;
client.onMessage = showMessage;
client.onError = (reason) => showError(`Relay: ${reason}`);

function relayURL() {
  const url = $('relay-url').value.trim();
  if (!/^wss?:\/\//.test(url)) throw new Error('the relay URL must start with ws:// or wss://');
  return url;
}

function checkWebCrypto() {
  if (!globalThis.crypto || !crypto.subtle) {
    throw new Error('this page needs WebCrypto, which browsers only offer over https:// or on localhost');
  }
}

$('subscribe-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  clearError();
  const button = $('subscribe');
  button.disabled = true;
  try {
    checkWebCrypto();
    const url = relayURL();
    const peerID = $('peer-id').value.trim();
    const userID = $('user-id').value.trim() || peerID;
    const key = await lib.subscriptionKey(peerID);
    $('sub-key').textContent = key;
    saveSettings();
    await client.connect(url);
    await client.subscribe(userID, key);
    showStatus('subscribed', userID === peerID ? `as ${peerID}` : `as ${peerID}, user ID ${userID}`);
  } catch (err) {
    showError(err.message);
  } finally {
    button.disabled = false;
  }
});

$('disconnect').addEventListener('click', () => client.close());

$('publish-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  clearError();
  const button = $('publish');
  button.disabled = true;
  try {
    checkWebCrypto();
    const recipient = $('recipient').value.trim();
    await lib.peerDigest(recipient); // refuse a bad peer ID before sending
    const bytes = new TextEncoder().encode($('text').value);
    if (client.state === 'disconnected') {
      // A send-only connection: the relay closes it after its subscribe deadline.
      await client.connect(relayURL());
    }
    const id = await client.publish(recipient, bytes);
    published.push({ id, recipient, size: bytes.length, publishedAt: new Date().toISOString() });
    const li = document.createElement('li');
    const code = document.createElement('code');
    code.textContent = id;
    li.append(`${formatSize(bytes.length)} to ${recipient}: `, code);
    $('published').prepend(li);
    $('text').value = '';
  } catch (err) {
    showError(`Cannot publish: ${err.message}`);
  } finally {
    button.disabled = false;
  }
});

loadSettings();
showStatus('disconnected', '');
window.courier.ready = true;
