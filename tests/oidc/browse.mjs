#!/usr/bin/env node
// Scripted "user's browser" over plain HTTP for the test OIDC provider (provider.mjs).
// Contract: shared-contracts/oidc-provider.md. See README.md in this folder.
//
//   node tests/oidc/browse.mjs <authorize_url> --user alice [--password P] [--totp-seed S]
//                              [--follow] [--jar FILE]
//
// stdout: the redirect URL (…?code=…&state=…&iss=…), then `FOLLOWED <status>` with --follow.
// exit 0 ok, 1 the --follow GET failed, 2 anything else (reason on stderr, one line).

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';

const MAX_STEPS = 40;
const TIMEOUT_MS = 15_000;

let jarRef; // saved on every exit path once loaded

function fail(reason, code = 2) {
  try { jarRef?.save(); } catch { /* ignore */ }
  process.stderr.write(`browse: ${String(reason).replace(/\s+/g, ' ').trim()}\n`);
  process.exit(code);
}

// ---------------------------------------------------------------- CLI
function parseArgs(argv) {
  const o = { follow: false };
  const positional = [];
  for (let i = 0; i < argv.length; i += 1) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    const next = () => {
      if (value !== undefined) return value;
      i += 1;
      if (i >= argv.length) fail(`${arg} needs a value`, 64);
      return argv[i];
    };
    switch (arg) {
      case '--user': o.user = next(); break;
      case '--password': o.password = next(); break;
      case '--totp-seed': o.totpSeed = next(); break;
      case '--jar': o.jar = next(); break;
      case '--follow': o.follow = true; break;
      default:
        if (arg.startsWith('--')) fail(`unknown option ${arg}`, 64);
        positional.push(arg);
    }
  }
  if (positional.length !== 1) fail('usage: browse.mjs <authorize_url> --user NAME [--password P] [--totp-seed S] [--follow] [--jar FILE]', 64);
  if (!o.user) fail('--user is required', 64);
  [o.authorizeUrl] = positional;
  o.password ??= `${o.user}-password`;
  return o;
}

const opts = parseArgs(process.argv.slice(2));
let authorize;
try {
  authorize = new URL(opts.authorizeUrl);
} catch {
  fail('authorize URL is not a URL');
}
const redirectUri = authorize.searchParams.get('redirect_uri');

// ---------------------------------------------------------------- cookie jar
// Like a browser: cookies are scoped by host name and path, NOT by port.
class Jar {
  constructor(file) {
    this.file = file;
    this.cookies = [];
    if (file && fs.existsSync(file)) {
      try {
        const data = JSON.parse(fs.readFileSync(file, 'utf8'));
        if (Array.isArray(data.cookies)) this.cookies = data.cookies;
      } catch (err) {
        fail(`cannot read jar ${file}: ${err.message}`);
      }
    }
    this.purge();
  }

  purge() {
    const now = Date.now();
    this.cookies = this.cookies.filter((c) => c.expires == null || c.expires > now);
  }

  store(url, setCookie) {
    const parts = setCookie.split(';');
    const first = parts.shift();
    const eq = first.indexOf('=');
    if (eq <= 0) return;
    const name = first.slice(0, eq).trim();
    const value = first.slice(eq + 1).trim();
    const c = {
      name, value, domain: url.hostname, hostOnly: true, path: null, expires: null, secure: false,
    };
    let maxAge;
    for (const attr of parts) {
      const i = attr.indexOf('=');
      const k = (i < 0 ? attr : attr.slice(0, i)).trim().toLowerCase();
      const v = i < 0 ? '' : attr.slice(i + 1).trim();
      if (k === 'path' && v.startsWith('/')) c.path = v;
      else if (k === 'domain' && v) { c.domain = v.replace(/^\./, '').toLowerCase(); c.hostOnly = false; }
      else if (k === 'max-age' && /^-?\d+$/.test(v)) maxAge = Number(v);
      else if (k === 'expires') { const t = Date.parse(v); if (!Number.isNaN(t)) c.expires = t; }
      else if (k === 'secure') c.secure = true;
    }
    if (maxAge !== undefined) c.expires = Date.now() + maxAge * 1000;
    if (!c.path) {
      const p = url.pathname;
      c.path = p.lastIndexOf('/') > 0 ? p.slice(0, p.lastIndexOf('/')) : '/';
    }
    this.cookies = this.cookies.filter((o) => !(o.name === c.name && o.domain === c.domain && o.path === c.path));
    if (c.expires == null || c.expires > Date.now()) this.cookies.push(c);
  }

  header(url) {
    this.purge();
    const host = url.hostname.toLowerCase();
    const matches = this.cookies.filter((c) => {
      const domainOk = c.hostOnly ? host === c.domain : (host === c.domain || host.endsWith(`.${c.domain}`));
      const pathOk = url.pathname === c.path
        || (url.pathname.startsWith(c.path) && (c.path.endsWith('/') || url.pathname[c.path.length] === '/'));
      return domainOk && pathOk && (!c.secure || url.protocol === 'https:');
    });
    matches.sort((a, b) => b.path.length - a.path.length);
    return matches.map((c) => `${c.name}=${c.value}`).join('; ');
  }

  save() {
    if (!this.file) return;
    this.purge();
    const tmp = `${this.file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, `${JSON.stringify({ cookies: this.cookies }, null, 1)}\n`, { mode: 0o600 });
    fs.renameSync(tmp, this.file);
  }
}

const jar = new Jar(opts.jar);
jarRef = jar;

async function request(url, { method = 'GET', form } = {}) {
  const headers = { accept: 'text/html,application/xhtml+xml,*/*;q=0.8', 'user-agent': 'relogin-farm-browse/1' };
  const cookie = jar.header(url);
  if (cookie) headers.cookie = cookie;
  let body;
  if (form) {
    body = new URLSearchParams(form).toString();
    headers['content-type'] = 'application/x-www-form-urlencoded';
  }
  let res;
  try {
    res = await fetch(url, { method, headers, body, redirect: 'manual', signal: AbortSignal.timeout(TIMEOUT_MS) });
  } catch (err) {
    fail(`${method} ${url.origin}${url.pathname} failed: ${err.cause?.code ?? err.cause?.message ?? err.message}`);
  }
  for (const sc of res.headers.getSetCookie()) jar.store(url, sc);
  const text = await res.text();
  return { status: res.status, location: res.headers.get('location'), text };
}

// ---------------------------------------------------------------- tiny HTML form reader
const decode = (s) => s
  .replace(/&#(\d+);/g, (_, n) => String.fromCodePoint(Number(n)))
  .replace(/&#x([0-9a-f]+);/gi, (_, n) => String.fromCodePoint(parseInt(n, 16)))
  .replace(/&quot;/g, '"').replace(/&#39;|&apos;/g, "'")
  .replace(/&lt;/g, '<').replace(/&gt;/g, '>')
  .replace(/&amp;/g, '&');

function attrs(s) {
  const out = {};
  const re = /([^\s=/>"']+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+)))?/g;
  let m;
  while ((m = re.exec(s))) out[m[1].toLowerCase()] = decode(m[2] ?? m[3] ?? m[4] ?? '');
  return out;
}

function forms(html) {
  const out = [];
  const re = /<form\b([^>]*)>([\s\S]*?)<\/form>/gi;
  let m;
  while ((m = re.exec(html))) {
    const a = attrs(m[1]);
    const inner = m[2];
    const inputs = [...inner.matchAll(/<input\b([^>]*)>/gi)].map((x) => attrs(x[1]));
    const buttons = [...inner.matchAll(/<button\b([^>]*)>/gi)].map((x) => attrs(x[1]));
    out.push({
      action: a.action ?? '', method: (a.method ?? 'get').toLowerCase(), inputs, buttons,
    });
  }
  return out;
}

const hasId = (f, id) => f.inputs.some((i) => i.id === id) || f.buttons.some((b) => b.id === id);

function formFields(f, clickedId) {
  const fields = [];
  for (const i of f.inputs) {
    if (!i.name) continue;
    const type = (i.type ?? 'text').toLowerCase();
    if (['submit', 'button', 'image', 'reset', 'file'].includes(type)) continue;
    if ((type === 'checkbox' || type === 'radio') && !('checked' in i)) continue;
    fields.push([i.name, i.value ?? (type === 'checkbox' || type === 'radio' ? 'on' : '')]);
  }
  const b = f.buttons.find((x) => x.id === clickedId);
  if (b?.name) fields.push([b.name, b.value ?? '']);
  return fields;
}

function pageError(html) {
  const m = /<[a-z0-9]+\b[^>]*\bid\s*=\s*["']?error["']?[^>]*>([\s\S]*?)<\/[a-z0-9]+>/i.exec(html);
  return m ? decode(m[1].replace(/<[^>]*>/g, '')).trim() : undefined;
}

function pageTitle(html) {
  const m = /<title>([\s\S]*?)<\/title>/i.exec(html);
  return m ? decode(m[1]).trim() : undefined;
}

// ---------------------------------------------------------------- TOTP
function base32Decode(s) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const clean = s.toUpperCase().replace(/[\s=-]/g, '');
  let bits = 0;
  let value = 0;
  const out = [];
  for (const ch of clean) {
    const v = alphabet.indexOf(ch);
    if (v < 0) fail('TOTP seed is not base32');
    value = (value << 5) | v;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

function totpNow(seed) {
  const key = base32Decode(seed);
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(Math.floor(Date.now() / 1000 / 30)));
  const mac = crypto.createHmac('sha1', key).update(msg).digest();
  const off = mac[mac.length - 1] & 0x0f;
  const bin = ((mac[off] & 0x7f) << 24) | (mac[off + 1] << 16) | (mac[off + 2] << 8) | mac[off + 3];
  return String(bin % 1_000_000).padStart(6, '0');
}

async function totpSeed() {
  if (opts.totpSeed) return opts.totpSeed;
  const url = new URL(`/__test/users/${encodeURIComponent(opts.user)}`, authorize.origin);
  let res;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(TIMEOUT_MS) });
  } catch (err) {
    fail(`cannot fetch TOTP seed: ${err.cause?.code ?? err.message}`);
  }
  if (!res.ok) fail(`cannot fetch TOTP seed: HTTP ${res.status}`);
  const data = await res.json();
  if (!data.totp_seed) fail(`provider has no TOTP seed for ${opts.user}`);
  return data.totp_seed;
}

// ---------------------------------------------------------------- the walk
function isFinalRedirect(loc) {
  if (redirectUri) return loc.href.startsWith(redirectUri);
  return loc.origin !== authorize.origin; // no redirect_uri given: first hop off the provider
}

async function finish(loc, raw) {
  jar.save();
  const err = loc.searchParams.get('error');
  if (err) {
    const desc = loc.searchParams.get('error_description');
    fail(`authorization failed: ${err}${desc ? ` (${desc})` : ''}`);
  }
  if (!loc.searchParams.get('code')) fail('redirect carries no code');
  // print the Location as the provider sent it (absolute), so nothing is re-encoded
  process.stdout.write(`${/^https?:\/\//i.test(raw) ? raw : loc.href}\n`);
  if (!opts.follow) process.exit(0);
  let res;
  try {
    res = await fetch(loc, { redirect: 'manual', signal: AbortSignal.timeout(TIMEOUT_MS) });
    await res.arrayBuffer().catch(() => {});
  } catch (e) {
    process.stdout.write('FOLLOWED 0\n');
    fail(`GET redirect URL failed: ${e.cause?.code ?? e.message}`, 1);
  }
  process.stdout.write(`FOLLOWED ${res.status}\n`);
  if (res.status >= 400) fail(`GET redirect URL answered ${res.status}`, 1);
  process.exit(0);
}

async function main() {
  let url = authorize;
  let method = 'GET';
  let form;
  const submitted = { login: 0, totp: 0, consent: 0 };

  for (let step = 0; step < MAX_STEPS; step += 1) {
    const res = await request(url, { method, form });
    method = 'GET';
    form = undefined;

    if (res.status >= 300 && res.status < 400 && res.location) {
      const loc = new URL(res.location, url);
      if (isFinalRedirect(loc)) return finish(loc, res.location);
      url = loc;
      continue;
    }

    const where = `${url.pathname} (HTTP ${res.status})`;
    const err = pageError(res.text);
    if (res.status !== 200) fail(`provider error at ${where}: ${err ?? pageTitle(res.text) ?? res.text.slice(0, 200)}`);

    const fs_ = forms(res.text);
    const login = fs_.find((f) => hasId(f, 'username') && hasId(f, 'password'));
    const totp = fs_.find((f) => hasId(f, 'code'));
    const consent = fs_.find((f) => hasId(f, 'allow'));

    let target;
    if (login) {
      if (submitted.login > 0) fail(`login failed: ${err ?? 'login page shown again'}`);
      submitted.login += 1;
      target = login;
      form = formFields(login, 'submit').map(([k, v]) => {
        if (k === 'username') return [k, opts.user];
        if (k === 'password') return [k, opts.password];
        return [k, v];
      });
    } else if (totp) {
      if (submitted.totp > 0) fail(`TOTP failed: ${err ?? 'TOTP page shown again'}`);
      submitted.totp += 1;
      target = totp;
      const code = totpNow(await totpSeed());
      form = formFields(totp, 'submit').map(([k, v]) => (k === 'code' ? [k, code] : [k, v]));
    } else if (consent) {
      if (submitted.consent > 2) fail('consent page keeps coming back');
      submitted.consent += 1;
      target = consent;
      form = formFields(consent, 'allow');
    } else {
      fail(`unexpected page at ${where}: ${err ?? pageTitle(res.text) ?? 'no known form'}`);
    }
    method = target.method === 'post' ? 'POST' : 'GET';
    url = new URL(target.action || url.href, url);
    if (method === 'GET') {
      for (const [k, v] of form) url.searchParams.append(k, v);
      form = undefined;
    }
  }
  fail(`gave up after ${MAX_STEPS} steps`);
}

try {
  await main();
} catch (err) {
  fail(`internal error: ${err.message}`);
}
