// The browser client of `python -m play.serve` (docs/protocol.md describes the messages).
// Held keys -> action through the game's key map from the server's hello, with the same rule
// as envs.games.GameSpec.action_for_keys; PNG frames are drawn onto a 64x64 canvas that CSS
// scales up with crisp pixels.
"use strict";

const canvas = document.getElementById("screen");
const ctx = canvas.getContext("2d");
const el = (id) => document.getElementById(id);
const resetButton = el("reset");
const pauseButton = el("pause");

// Browser KeyboardEvent.key -> the key names of the key map (pygame's key.name).
const KEY_NAMES = { ArrowUp: "up", ArrowDown: "down", ArrowLeft: "left", ArrowRight: "right", " ": "space",
                    Enter: "return", Escape: "escape", Shift: "left shift", Control: "left ctrl" };

// State the page's tests read (window.dream).
const dream = window.dream = { hello: null, stats: null, framesShown: 0, action: null, closed: null, errors: [] };

let ws = null;
let held = new Set();
let usedKeys = new Set();       // every key name a chord or alias mentions
let paused = false;
let pendingBlob = null;         // the newest frame not drawn yet (older ones are skipped)
let drawing = false;
let shownTimes = [];

function keyName(event) {
  return (KEY_NAMES[event.key] ?? event.key).toLowerCase();
}

// The chord with the most keys that are all held wins; aliases first; "" when none is held.
function actionForKeys(keys, hello) {
  const logical = new Set([...keys].map((k) => hello.key_aliases[k] ?? k));
  let best = hello.keymap[""] ?? 0, bestLen = 0;
  for (const [chord, action] of Object.entries(hello.keymap)) {
    const parts = chord ? chord.split("+") : [];
    if (parts.length > bestLen && parts.every((p) => logical.has(p))) {
      best = action; bestLen = parts.length;
    }
  }
  return best;
}

function send(message) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

function sendAction() {
  if (!dream.hello) return;
  const action = actionForKeys(held, dream.hello);
  if (action !== dream.action) {
    dream.action = action;
    send({ type: "action", action });
  }
}

function setMessage(text, bad = false) {
  const m = el("message");
  m.textContent = text;
  m.className = bad ? "bad" : "";
}

async function drawNewest() {
  if (drawing) return;
  drawing = true;
  try {
    while (pendingBlob) {
      const blob = pendingBlob;
      pendingBlob = null;
      const bitmap = await createImageBitmap(blob);
      if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
        canvas.width = bitmap.width; canvas.height = bitmap.height;
      }
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(bitmap, 0, 0);
      bitmap.close();
      dream.framesShown += 1;
      const now = performance.now();
      shownTimes.push(now);
      while (shownTimes.length && now - shownTimes[0] > 2000) shownTimes.shift();
    }
  } finally {
    drawing = false;
  }
}

function onHello(hello) {
  dream.hello = hello;
  usedKeys = new Set([...Object.keys(hello.key_aliases), ...Object.values(hello.key_aliases)]);
  for (const chord of Object.keys(hello.keymap)) for (const k of chord.split("+")) if (k) usedKeys.add(k);
  el("title").textContent = `dream ${hello.game}`;
  const chords = Object.entries(hello.keymap).filter(([c]) => c)
    .map(([c, a]) => `${c} = ${hello.action_meanings[a]}`).join(", ");
  const aliases = Object.entries(hello.key_aliases).map(([k, v]) => `${k} = ${v}`).join(", ");
  el("keys").textContent = `keys: ${chords}${aliases ? `; also ${aliases}` : ""}` +
    `${usedKeys.has("r") ? "" : "; R reset"}${usedKeys.has("p") ? "" : ", P pause"}`;
  resetButton.disabled = pauseButton.disabled = false;
  setMessage("");
  dream.action = null;
  sendAction();
}

function onStats(stats) {
  dream.stats = stats;
  el("fps").textContent = stats.fps.toFixed(1);
  el("latency").textContent = stats.latency_ms.toFixed(0);
  el("score").textContent = stats.score;
  const meanings = dream.hello ? dream.hello.action_meanings : [];
  el("action").textContent = stats.action >= 0 ? (meanings[stats.action] ?? stats.action) : "-";
  if (stats.terminated && !paused) setMessage("the dream predicts the game ended (Reset restarts it)");
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  ws = new WebSocket(`${scheme}${location.host}/ws`);
  ws.binaryType = "blob";
  ws.onmessage = (event) => {
    if (typeof event.data !== "string") {
      pendingBlob = event.data;
      drawNewest();
      return;
    }
    const msg = JSON.parse(event.data);
    if (msg.type === "hello") onHello(msg);
    else if (msg.type === "stats") onStats(msg);
    else if (msg.type === "error") {
      dream.errors.push(msg.message);
      setMessage(msg.message, true);
    }
  };
  ws.onclose = (event) => {
    dream.closed = { code: event.code, reason: event.reason };
    resetButton.disabled = pauseButton.disabled = true;
    if (event.code === 1013) setMessage(`The server is full (${event.reason}). Reload the page to try again.`, true);
    else setMessage(`Disconnected from the server (code ${event.code}${event.reason ? `: ${event.reason}` : ""}). ` +
                    "Reload the page to reconnect.", true);
  };
}

function reset() { send({ type: "reset" }); setMessage(paused ? "paused" : ""); }

function togglePause() {
  paused = !paused;
  send({ type: "pause", paused });
  pauseButton.textContent = paused ? "Resume (P)" : "Pause (P)";
  setMessage(paused ? "paused" : "");
}

window.addEventListener("keydown", (event) => {
  const k = keyName(event);
  if (dream.hello && !usedKeys.has(k) && !event.repeat && !event.ctrlKey && !event.metaKey) {
    if (k === "r") { reset(); return; }
    if (k === "p") { togglePause(); return; }
  }
  if (!usedKeys.has(k)) return;
  event.preventDefault();       // arrows must not scroll, space must not press a button
  held.add(k);
  sendAction();
});
window.addEventListener("keyup", (event) => {
  const k = keyName(event);
  if (!usedKeys.has(k)) return;
  event.preventDefault();
  held.delete(k);
  sendAction();
});
window.addEventListener("blur", () => { held.clear(); sendAction(); });
resetButton.addEventListener("click", (event) => { reset(); event.currentTarget.blur(); });
pauseButton.addEventListener("click", (event) => { togglePause(); event.currentTarget.blur(); });
setInterval(() => {
  const now = performance.now();
  while (shownTimes.length && now - shownTimes[0] > 2000) shownTimes.shift();
  el("shown").textContent = (shownTimes.length / 2).toFixed(1);
}, 500);

connect();
