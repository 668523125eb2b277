// The page side of scripts/bench-remote: one remote-browser session over its
// real WebSocket (auth message first), measured as a phone would see it.
//
//   node --experimental-websocket scripts/bench-remote.mjs WS_URL TOKEN_FILE PAGE_URL CLICKS STILL_S
//
// Prints one JSON object per line: {"event": "idle_start"} when the page has
// gone still (the caller samples the farm's CPU from then), {"event":
// "idle_end"} STILL_S seconds later, and last {"event": "result", …}. Every
// wait is bounded; any failure prints {"event": "error", "detail"} and exits 1.
import { readFileSync } from 'node:fs';

const [wsUrl, tokenFile, pageUrl, clicksArg, stillArg] = process.argv.slice(2);
const CLICKS = Number(clicksArg);
const STILL_S = Number(stillArg);
// The bench page's buttons (CSS pixels of the frame; see PAGE in bench-remote).
const COUNT_BUTTON = { x: 140, y: 90 };
const ANIMATE_BUTTON = { x: 140, y: 240 };
const ANIMATION_S = 5;

const say = (obj) => console.log(JSON.stringify(obj));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let frames = []; // arrival times (ms) of binary messages
let texts = [];
let closed = null;
const ws = new WebSocket(wsUrl);
ws.binaryType = 'arraybuffer';
ws.onmessage = (m) => {
  if (typeof m.data === 'string') texts.push(JSON.parse(m.data));
  else frames.push(performance.now());
};
ws.onclose = (e) => { closed = `${e.code} ${e.reason}`; };

async function until(what, ok, ms) {
  const end = performance.now() + ms;
  while (!ok()) {
    if (closed) throw new Error(`socket closed (${closed}) waiting for ${what}`);
    if (performance.now() > end) throw new Error(`no ${what} within ${ms} ms`);
    await sleep(5);
  }
}

/** Waits until no frame came for `quietMs` (at most `ms`). */
async function still(quietMs, ms) {
  const end = performance.now() + ms;
  for (;;) {
    const last = frames.length ? frames[frames.length - 1] : 0;
    if (performance.now() - last >= quietMs) return;
    if (performance.now() > end) throw new Error(`the page did not go still within ${ms} ms`);
    await sleep(20);
  }
}

const send = (msg) => ws.send(JSON.stringify(msg));
const framesIn = (from, to) => frames.filter((t) => t >= from && t < to).length;
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

try {
  await until('socket open', () => ws.readyState === WebSocket.OPEN, 10000);
  send({ type: 'auth', token: readFileSync(tokenFile, 'utf8').trim() });
  await until('first frame', () => frames.length > 0, 15000);
  send({ type: 'navigate', url: pageUrl });
  const target = pageUrl.replace(/[?#].*$/, '');
  await until('the bench page', () => texts.some((t) => t.type === 'url' && t.url === target), 15000);
  await still(800, 10000);

  // click -> next frame
  const latencies = [];
  for (let i = 0; i < CLICKS; i++) {
    const before = frames.length;
    const t0 = performance.now();
    send({ type: 'click', ...COUNT_BUTTON });
    await until('a frame after a click', () => frames.length > before, 5000);
    latencies.push(frames[before] - t0);
    await still(400, 5000);
  }

  // frames/s while the page changes (an animation on every display frame)
  send({ type: 'click', ...ANIMATE_BUTTON });
  await sleep(500);
  const changeFrom = performance.now();
  await sleep((ANIMATION_S - 1.5) * 1000);
  const changeTo = performance.now();
  const changing = framesIn(changeFrom, changeTo) / ((changeTo - changeFrom) / 1000);
  await sleep(1500);
  await still(1000, 10000);

  // still: frames/s, while the caller samples the CPU
  const stillFrom = performance.now();
  say({ event: 'idle_start' });
  await sleep(STILL_S * 1000);
  const stillTo = performance.now();
  say({ event: 'idle_end' });
  const stillFrames = framesIn(stillFrom, stillTo);
  say({
    event: 'result',
    clicks: CLICKS,
    latency_ms: latencies.map((l) => Math.round(l * 10) / 10),
    latency_median_ms: pct(latencies, 50),
    latency_p95_ms: pct(latencies, 95),
    changing_fps: changing,
    still_frames: stillFrames,
    still_fps: stillFrames / ((stillTo - stillFrom) / 1000),
    still_s: (stillTo - stillFrom) / 1000,
  });
  ws.close(1000);
  process.exit(0);
} catch (e) {
  say({ event: 'error', detail: String(e && e.message ? e.message : e) });
  process.exit(1);
}
