// The Node side of scripts/bench-relogin: the relogin flow of
// examples/bench_relogin.rs driven by playwright-core itself (the npm
// package the farm's driver is), in process, on its own persistent profile.
//
//   node scripts/bench-relogin.mjs --issuer URL --redirect-uri URI --user NAME \
//     --profile DIR --mode live|full [--runs 7] [--paced] --chromium-flag F ...
//
// Same steps as the Rust side's script: goto the authorize URL; fill
// #username and #password, click #submit, click #allow, each only if
// visible once the page has loaded; the run ends the moment a navigation
// request to the redirect URI is seen (context.on('request')). Then
// context.close(). One untimed warm-up run first; `full` ends the
// provider's sessions before each run. Prints one JSON line per run,
// {"impl":"node","mode":…,"run":…,"ms":…,"redirect_ms":…}; with --paced
// each run waits for a line on stdin (EOF ends the process).

import { createHash, randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { chromium } from './playwright/node_modules/playwright-core/index.mjs';

const STEP_TIMEOUT = 15_000;
const CAPTURE_GRACE = 300; // ms to wait for a redirect already on its way when a step fails
const END_GRACE = 2000; // ms to wait for a redirect after the last step
const EXPECTED_STEPS = { live: ['goto'], full: ['goto', 'username', 'password', 'submit'] };

const { values: opts } = parseArgs({
  options: {
    issuer: { type: 'string' },
    'redirect-uri': { type: 'string' },
    user: { type: 'string' },
    profile: { type: 'string' },
    mode: { type: 'string' },
    runs: { type: 'string', default: '7' },
    paced: { type: 'boolean', default: false },
    'chromium-flag': { type: 'string', multiple: true, default: [] },
  },
});
for (const key of ['issuer', 'redirect-uri', 'user', 'profile', 'mode']) {
  if (!opts[key]) throw new Error(`--${key} is required`);
}
if (!(opts.mode in EXPECTED_STEPS)) throw new Error('--mode is live or full');

const redirectUri = new URL(opts['redirect-uri']);
const issuer = opts.issuer.replace(/\/+$/, '');
const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();

const b64url = (buf) => buf.toString('base64url');

function authorizeUrl() {
  const url = new URL(discovery.authorization_endpoint);
  const challenge = b64url(createHash('sha256').update(b64url(randomBytes(32))).digest());
  for (const [k, v] of Object.entries({
    client_id: 'daemon-web',
    response_type: 'code',
    redirect_uri: redirectUri.href,
    scope: 'openid',
    state: b64url(randomBytes(32)),
    code_challenge: challenge,
    code_challenge_method: 'S256',
  })) url.searchParams.append(k, v);
  return url.href;
}

/** Same origin and path as the redirect URI (any query). */
function isRedirect(candidate) {
  const u = new URL(candidate);
  return u.origin === redirectUri.origin && u.pathname === redirectUri.pathname;
}

const steps = (url) => [
  { name: 'goto', run: (page) => page.goto(url, { waitUntil: 'load', timeout: STEP_TIMEOUT }) },
  { name: 'username', selector: '#username', run: (page) => page.fill('#username', opts.user, { timeout: STEP_TIMEOUT }) },
  { name: 'password', selector: '#password', run: (page) => page.fill('#password', `${opts.user}-password`, { timeout: STEP_TIMEOUT }) },
  { name: 'submit', selector: '#submit', run: (page) => page.click('#submit', { timeout: STEP_TIMEOUT }) },
  { name: 'allow', selector: '#allow', run: (page) => page.click('#allow', { timeout: STEP_TIMEOUT }) },
];

/** The optional-step rule of the farm: wait for the page to load, then look once. */
async function visible(page, selector) {
  await page.waitForLoadState('load', { timeout: STEP_TIMEOUT });
  return page.locator(selector).first().isVisible();
}

/** Resolves after `ms` without keeping the process alive. */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms).unref());

/** Runs the steps until the redirect is captured; returns the names of the steps that acted. */
async function drive(page, url, captured) {
  const CAPTURED = Symbol('captured');
  const orCaptured = (promise) => {
    promise.catch(() => {}); // it may lose the race and fail later, as the browser closes
    return Promise.race([captured.then(() => CAPTURED), promise]);
  };
  const capturedWithin = async (ms) => (await orCaptured(sleep(ms))) === CAPTURED;
  const acted = [];
  for (const step of steps(url)) {
    let acting = false;
    try {
      if (step.selector) {
        const shown = await orCaptured(visible(page, step.selector));
        if (shown === CAPTURED) return acted;
        if (!shown) continue;
      }
      acting = true;
      if ((await orCaptured(step.run(page))) === CAPTURED) return [...acted, step.name];
      acted.push(step.name);
    } catch (error) {
      // A navigation into the redirect URI fails (nothing listens there).
      if (await capturedWithin(CAPTURE_GRACE)) return acting ? [...acted, step.name] : acted;
      throw error;
    }
  }
  if (await capturedWithin(END_GRACE)) return acted;
  throw new Error(`no redirect to ${redirectUri.href} after the last step`);
}

async function endSessions() {
  const resp = await fetch(`${issuer}/__test/end-sessions`, { method: 'POST' });
  if (!resp.ok) throw new Error(`POST /__test/end-sessions: HTTP ${resp.status}`);
}

async function runOnce(run) {
  if (opts.mode === 'full') await endSessions();
  const url = authorizeUrl();
  const started = performance.now();
  const context = await chromium.launchPersistentContext(opts.profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: opts['chromium-flag'],
  });
  let acted;
  let redirectMs;
  try {
    const captured = new Promise((resolve) => {
      context.on('request', (request) => {
        if (request.isNavigationRequest() && isRedirect(request.url())) resolve(request.url());
      });
    });
    const page = context.pages()[0] ?? (await context.newPage());
    acted = await drive(page, url, captured);
    redirectMs = performance.now() - started;
  } finally {
    await context.close();
  }
  const ms = performance.now() - started;
  const expected = EXPECTED_STEPS[opts.mode];
  if (run > 0 && acted.join() !== expected.join()) {
    throw new Error(`run ${run}: steps ${acted} acted, expected ${expected} for mode ${opts.mode}`);
  }
  const round = (x) => Math.round(x * 10) / 10;
  console.log(JSON.stringify({
    impl: 'node', mode: opts.mode, run, warmup: run === 0, ms: round(ms), redirect_ms: round(redirectMs), steps: acted,
  }));
}

const stdin = opts.paced ? createInterface({ input: process.stdin })[Symbol.asyncIterator]() : null;
for (let run = 0; run <= Number(opts.runs); run += 1) {
  if (stdin && (await stdin.next()).done) break;
  await runOnce(run);
}
stdin?.return();
