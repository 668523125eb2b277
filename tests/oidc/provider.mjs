#!/usr/bin/env node
// Real OIDC provider (npm `oidc-provider`) for relogin-farm's tests and demo.
// Contract: shared-contracts/oidc-provider.md. See README.md in this folder.
//
//   node tests/oidc/provider.mjs [--port N] [--access-ttl SECONDS] [--redirect-uri URI ...]
//
// stdout carries exactly one line, `READY http://127.0.0.1:<port>`; everything else goes to stderr.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

// oidc-provider prints its notices with console.info (stdout): keep stdout for the READY line only.
console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);
const consoleWarn = console.warn.bind(console);
console.warn = (...args) => {
  // expected: the token endpoint body is read before oidc-provider sees it (see handleToken)
  if (String(args[0]).includes('already parsed request body detected')) return;
  consoleWarn(...args);
};

const USERNAME_RE = /^[a-z0-9][a-z0-9_-]{0,40}$/;
const REFRESH_TTL = 24 * 60 * 60;
const CODE_TTL = 60;

// ---------------------------------------------------------------- CLI
function usage(msg) {
  console.error(`provider.mjs: ${msg}`);
  console.error('usage: node provider.mjs [--port N] [--access-ttl SECONDS] [--redirect-uri URI ...]');
  process.exit(64);
}

function parseArgs(argv) {
  const opts = { port: 0, accessTtl: 5, redirectUris: [] };
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
      if (i >= argv.length) usage(`${arg} needs a value`);
      return argv[i];
    };
    switch (arg) {
      case '--port': {
        const n = Number(next());
        if (!Number.isInteger(n) || n < 0 || n > 65535) usage('--port must be 0..65535');
        opts.port = n;
        break;
      }
      case '--access-ttl': {
        const n = Number(next());
        if (!Number.isInteger(n) || n < 1) usage('--access-ttl must be a positive integer (seconds)');
        opts.accessTtl = n;
        break;
      }
      case '--redirect-uri': {
        const u = next();
        try { new URL(u); } catch { usage(`--redirect-uri is not a URL: ${u}`); }
        opts.redirectUris.push(u);
        break;
      }
      case '-h':
      case '--help':
        usage('help');
        break;
      default:
        usage(`unknown argument ${arg}`);
    }
  }
  if (opts.redirectUris.length === 0) opts.redirectUris.push('http://127.0.0.1:18765/callback');
  return opts;
}

const opts = parseArgs(process.argv.slice(2));

// ---------------------------------------------------------------- users / TOTP
function base32(buf) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  let out = '';
  for (const byte of buf) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += alphabet[(value << (5 - bits)) & 31];
  return out;
}

function seedBytes(username) {
  return crypto.createHash('sha1').update(`seed:${username}`).digest().subarray(0, 20);
}

function totpAt(key, counter) {
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(counter));
  const mac = crypto.createHmac('sha1', key).update(msg).digest();
  const off = mac[mac.length - 1] & 0x0f;
  const bin = ((mac[off] & 0x7f) << 24) | (mac[off + 1] << 16) | (mac[off + 2] << 8) | mac[off + 3];
  return String(bin % 1_000_000).padStart(6, '0');
}

function checkTotp(username, code) {
  if (!/^\d{6}$/.test(code)) return false;
  const key = seedBytes(username);
  const now = Math.floor(Date.now() / 1000 / 30);
  return [now - 1, now, now + 1].some((c) => totpAt(key, c) === code);
}

const isUser = (u) => typeof u === 'string' && USERNAME_RE.test(u);
const needsTotp = (u) => u.startsWith('totp-');
const passwordOf = (u) => `${u}-password`;
function safeEqual(a, b) {
  const x = Buffer.from(String(a));
  const y = Buffer.from(String(b));
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

// ---------------------------------------------------------------- storage adapter
// A plain in-memory adapter. The built-in MemoryAdapter is an LRU capped at 1000
// entries, which silently evicts refresh tokens (-> invalid_grant) once a test has
// a few hundred accounts; this one keeps everything until it expires, and lets the
// test-control API enumerate grants and sessions.
const store = new Map(); // "Model:id" -> { payload, exp (ms epoch or Infinity) }
const grantMembers = new Map(); // grantId -> Set<"Model:id">
const sessionUids = new Map(); // session uid -> session id
const userCodes = new Map(); // user code -> id

function liveEntry(key) {
  const e = store.get(key);
  if (!e) return undefined;
  if (e.exp <= Date.now()) {
    dropKey(key);
    return undefined;
  }
  return e;
}

function dropKey(key) {
  const e = store.get(key);
  if (!e) return;
  store.delete(key);
  const p = e.payload;
  if (p.grantId) {
    const members = grantMembers.get(p.grantId);
    if (members) {
      members.delete(key);
      if (members.size === 0) grantMembers.delete(p.grantId);
    }
  }
  if (p.uid && key.startsWith('Session:') && sessionUids.get(p.uid) === key.slice(8)) sessionUids.delete(p.uid);
  if (p.userCode) userCodes.delete(p.userCode);
}

setInterval(() => {
  const now = Date.now();
  for (const [key, e] of store) if (e.exp <= now) dropKey(key);
}, 30_000).unref();

class Adapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    dropKey(key);
    const exp = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Infinity;
    store.set(key, { payload, exp });
    if (payload.grantId && this.model !== 'Grant' && this.model !== 'Session') {
      let members = grantMembers.get(payload.grantId);
      if (!members) grantMembers.set(payload.grantId, (members = new Set()));
      members.add(key);
    }
    if (this.model === 'Session' && payload.uid) sessionUids.set(payload.uid, id);
    if (payload.userCode) userCodes.set(payload.userCode, id);
  }

  async find(id) {
    return liveEntry(this.key(id))?.payload;
  }

  async findByUid(uid) {
    const id = sessionUids.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = userCodes.get(userCode);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const e = liveEntry(this.key(id));
    if (e) e.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    dropKey(this.key(id));
  }

  async revokeByGrantId(grantId) {
    const members = grantMembers.get(grantId);
    if (!members) return;
    const prefix = `${this.model}:`;
    for (const key of [...members]) if (key.startsWith(prefix)) dropKey(key);
  }
}

function* liveOf(model) {
  const prefix = `${model}:`;
  const now = Date.now();
  for (const [key, e] of store) {
    if (key.startsWith(prefix) && e.exp > now) yield [key.slice(prefix.length), e.payload];
  }
}

// ---------------------------------------------------------------- consent memory
// account + client -> Set of OIDC scopes the account has allowed. Consent survives
// sessions ending and grants being revoked (like a real IdP remembering "you already
// allowed this app"), so a live session goes straight to the redirect.
const consents = new Map();
const consentKey = (accountId, clientId) => `${accountId}\u0000${clientId}`;
function rememberConsent(accountId, clientId, scopes) {
  const k = consentKey(accountId, clientId);
  const set = consents.get(k) ?? new Set();
  for (const s of scopes) if (s) set.add(s);
  consents.set(k, set);
}

// ---------------------------------------------------------------- stats
const stats = {
  refresh_grants: {},
  code_grants: {},
  refresh_failures: {},
  grants_revoked: 0,
};
const bump = (obj, sub) => { obj[sub] = (obj[sub] ?? 0) + 1; };
const refreshOwner = new Map(); // refresh token value (jti) -> accountId, kept after revocation

// ---------------------------------------------------------------- test-control state
let tokenDelayMs = 0;
let tokenFail = { remaining: 0, status: 503 };

// ---------------------------------------------------------------- HTML
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>body{font-family:sans-serif;max-width:24em;margin:3em auto;padding:0 1em}label,input,button{display:block;margin:.4em 0}input{width:100%;padding:.3em}#error{color:#b00}</style>
</head>
<body>
<h1>${esc(title)}</h1>
${body}
</body>
</html>
`;
}

function loginPage(uid, clientId, { username = '', error } = {}) {
  return page('Sign in', `<p>to continue to <b>${esc(clientId)}</b></p>
${error ? `<p id="error">${esc(error)}</p>\n` : ''}<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<label for="username">Username</label>
<input id="username" name="username" value="${esc(username)}" autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password">
<button id="submit" type="submit">Sign in</button>
</form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button id="cancel" type="submit">Cancel</button></form>`);
}

function totpPage(uid, username, { error } = {}) {
  return page('Two-step verification', `<p>Enter the 6-digit code from the authenticator app for <b>${esc(username)}</b>.</p>
${error ? `<p id="error">${esc(error)}</p>\n` : ''}<form method="post" action="/interaction/${esc(uid)}/totp" autocomplete="off">
<label for="code">Code</label>
<input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" autofocus>
<button id="submit" type="submit">Verify</button>
</form>`);
}

function consentPage(uid, clientId, accountId, scopes) {
  const items = scopes.map((s) => `<li>${esc(s)}</li>`).join('');
  return page('Authorize access', `<p><b>${esc(clientId)}</b> asks for access to the account <b>${esc(accountId)}</b>:</p>
<ul id="scopes">${items}</ul>
<form method="post" action="/interaction/${esc(uid)}/confirm">
<button id="allow" type="submit" autofocus>Allow</button>
</form>
<form method="post" action="/interaction/${esc(uid)}/abort">
<button id="deny" type="submit">Deny</button>
</form>`);
}

function errorPage(title, message) {
  return page(title, `<p id="error">${esc(message)}</p>`);
}

// ---------------------------------------------------------------- HTTP helpers
function send(res, status, body, type) {
  const buf = Buffer.from(body);
  res.writeHead(status, {
    'content-type': type,
    'content-length': buf.length,
    'cache-control': 'no-store',
  });
  res.end(buf);
}
const sendJson = (res, status, obj) => send(res, status, `${JSON.stringify(obj)}\n`, 'application/json; charset=utf-8');
const sendHtml = (res, status, html) => send(res, status, html, 'text/html; charset=utf-8');

async function readBody(req, limit = 64 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw Object.assign(new Error('request body too large'), { status: 413 });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}
const readForm = async (req) => new URLSearchParams(await readBody(req));
const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });

// ---------------------------------------------------------------- start
const { default: Provider } = await import('oidc-provider');

const server = http.createServer();
server.keepAliveTimeout = 5_000;
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(opts.port, '127.0.0.1', () => { server.off('error', reject); resolve(); });
}).catch((err) => {
  console.error(`provider.mjs: cannot listen on 127.0.0.1:${opts.port}: ${err.message}`);
  process.exit(1);
});
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

// The key is encoded by the generation itself: exporting the returned
// KeyObject can deadlock node 20 when a GC during the export finalizes the
// finished generation job (seen once: the provider hung before READY).
const { privateKey } = crypto.generateKeyPairSync('rsa', {
  modulusLength: 2048,
  publicKeyEncoding: { type: 'spki', format: 'jwk' },
  privateKeyEncoding: { type: 'pkcs8', format: 'jwk' },
});
const signingJwk = { ...privateKey, use: 'sig', alg: 'RS256', kid: `rs256-${port}` };

const codeClient = {
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  redirect_uris: opts.redirectUris,
  scope: 'openid offline_access profile email',
};

const provider = new Provider(issuer, {
  adapter: Adapter,
  clients: [
    { client_id: 'daemon-web', token_endpoint_auth_method: 'none', ...codeClient },
    {
      client_id: 'daemon-confidential',
      client_secret: 'daemon-confidential-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      ...codeClient,
    },
    {
      client_id: 'introspector',
      client_secret: 'introspector-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
  ],
  clientAuthMethods: ['none', 'client_secret_basic', 'client_secret_post'],
  jwks: { keys: [signingJwk] },
  cookies: {
    // Browsers do not isolate cookies by port: give every provider its own names.
    names: {
      session: `_session_${port}`,
      interaction: `_interaction_${port}`,
      resume: `_interaction_resume_${port}`,
    },
    keys: [crypto.randomBytes(32).toString('base64url')],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  responseTypes: ['code'],
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource: async (ctx, form) => {
        ctx.body = page('Sign out', `${form}<button id="logout" type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button>`);
      },
      postLogoutSuccessSource: async (ctx) => { ctx.body = page('Signed out', '<p id="signed-out">You are signed out.</p>'); },
    },
  },
  ttl: {
    AccessToken: () => opts.accessTtl,
    AuthorizationCode: CODE_TTL,
    // Flat 1 day from every rotation (the library default for public clients would
    // carry over the remaining lifetime of the rotated token instead).
    RefreshToken: () => REFRESH_TTL,
    IdToken: 3600,
    Interaction: 3600,
    Session: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
  },
  rotateRefreshToken: true,
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  expiresWithSession: async () => false,
  clientBasedCORS: () => false,
  findAccount: async (ctx, sub) => {
    if (!isUser(sub)) return undefined;
    return {
      accountId: sub,
      claims: async () => ({
        sub,
        name: sub,
        preferred_username: sub,
        email: `${sub}@example.test`,
        email_verified: true,
      }),
    };
  },
  loadExistingGrant: async (ctx) => {
    const { client, session } = ctx.oidc;
    const clientId = client.clientId;
    const accountId = session.accountId;
    if (!accountId) return undefined;
    const { Grant } = ctx.oidc.provider;
    const usable = (g) => g && g.accountId === accountId && g.clientId === clientId;

    // 1. the grant this consent interaction / browser session already points at
    const sessionGrantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(clientId);
    if (sessionGrantId) {
      const g = await Grant.find(sessionGrantId);
      if (usable(g)) return g;
    }
    // 2. any live grant of this account for this client (consent per account+client)
    let newest;
    for (const [id, p] of liveOf('Grant')) {
      if (p.accountId === accountId && p.clientId === clientId && (!newest || p.iat > newest.iat)) newest = { id, iat: p.iat };
    }
    if (newest) {
      const g = await Grant.find(newest.id);
      if (usable(g)) return g;
    }
    // 3. remembered consent (survives revocation): a fresh grant with those scopes
    const remembered = consents.get(consentKey(accountId, clientId));
    if (remembered?.size) {
      const g = new Grant({ accountId, clientId });
      g.addOIDCScope([...remembered].join(' '));
      await g.save();
      return g;
    }
    return undefined;
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    const msg = out.error_description ? `${out.error}: ${out.error_description}` : out.error;
    ctx.body = errorPage('Error', msg);
  },
});

// ---------------------------------------------------------------- events -> stats
provider.on('grant.success', (ctx) => {
  const gt = ctx.oidc.params?.grant_type;
  const sub = ctx.oidc.entities.Account?.accountId;
  if (!sub) return;
  if (gt === 'refresh_token') bump(stats.refresh_grants, sub);
  else if (gt === 'authorization_code') bump(stats.code_grants, sub);
});
provider.on('grant.error', (ctx, err) => {
  if (ctx.oidc?.params?.grant_type !== 'refresh_token' || err?.error !== 'invalid_grant') return;
  const value = ctx.oidc.params.refresh_token;
  const sub = ctx.oidc.entities?.RefreshToken?.accountId
    ?? (typeof value === 'string' ? refreshOwner.get(value) : undefined)
    ?? '?';
  bump(stats.refresh_failures, sub);
  console.error(`token: refresh_token grant for ${sub} failed: invalid_grant (${err.error_detail ?? err.error_description ?? ''})`);
});
provider.on('grant.revoked', (ctx, grantId) => {
  stats.grants_revoked += 1;
  console.error(`grant ${grantId} revoked (${ctx.oidc?.route ?? '?'})`);
});
provider.on('refresh_token.saved', (token) => {
  if (token.accountId) refreshOwner.set(token.jti, token.accountId);
});
provider.on('server_error', (ctx, err) => { console.error('server_error', err); });

// ---------------------------------------------------------------- interactions
const pendingTotp = new Map(); // interaction uid -> username (password already checked)
// Users whose sign-in got a new page (`/__test/markup`): after the password, an
// interstitial no login script knows, as when a provider redesigns its flow.
const changedMarkup = new Set();

function movedPage(uid, username) {
  return page('Sign-in has changed', `<p>We redesigned sign-in for <b>${esc(username)}</b>. Confirm to continue.</p>
<form method="post" action="/interaction/${esc(uid)}/abort"><button id="continue-new" type="submit">Continue</button></form>`);
}

async function handleInteraction(req, res, url) {
  const m = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|totp|confirm|abort))?\/?$/.exec(url.pathname);
  if (!m) return sendHtml(res, 404, errorPage('Not found', 'no such page'));
  const [, uid, action] = m;

  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    return sendHtml(res, 400, errorPage('Error', `${err.error ?? 'error'}: ${err.error_description ?? err.message}`));
  }
  if (details.uid !== uid) return sendHtml(res, 400, errorPage('Error', 'interaction mismatch'));
  const { prompt, params } = details;
  const clientId = params.client_id;

  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') {
      const pending = pendingTotp.get(uid);
      return sendHtml(res, 200, pending ? totpPage(uid, pending) : loginPage(uid, clientId));
    }
    if (prompt.name === 'consent') {
      const scopes = String(params.scope ?? '').split(' ').filter(Boolean);
      return sendHtml(res, 200, consentPage(uid, clientId, details.session?.accountId ?? '', scopes));
    }
    return sendHtml(res, 400, errorPage('Error', `unsupported prompt ${prompt.name}`));
  }

  if (req.method !== 'POST' || !action) return sendHtml(res, 405, errorPage('Error', 'method not allowed'));
  const form = await readForm(req);

  if (action === 'abort') {
    pendingTotp.delete(uid);
    return provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }

  if (action === 'login') {
    if (prompt.name !== 'login') return sendHtml(res, 400, errorPage('Error', 'not a login step'));
    const username = String(form.get('username') ?? '').trim();
    const password = String(form.get('password') ?? '');
    if (!isUser(username) || !safeEqual(password, passwordOf(username))) {
      console.error(`login: rejected password for ${JSON.stringify(username.slice(0, 60))}`);
      return sendHtml(res, 200, loginPage(uid, clientId, { username: username.slice(0, 60), error: 'Invalid username or password' }));
    }
    if (changedMarkup.has(username)) {
      console.error(`login: ${username} got the changed sign-in page`);
      return sendHtml(res, 200, movedPage(uid, username));
    }
    if (needsTotp(username)) {
      pendingTotp.set(uid, username);
      setTimeout(() => pendingTotp.delete(uid), 3600_000).unref();
      return sendHtml(res, 200, totpPage(uid, username));
    }
    console.error(`login: ${username} signed in`);
    return provider.interactionFinished(req, res, {
      login: { accountId: username, amr: ['pwd'] },
    }, { mergeWithLastSubmission: false });
  }

  if (action === 'totp') {
    const username = pendingTotp.get(uid);
    if (prompt.name !== 'login' || !username) return sendHtml(res, 400, errorPage('Error', 'not a verification step'));
    const code = String(form.get('code') ?? '').replace(/\s+/g, '');
    if (!checkTotp(username, code)) {
      console.error(`login: rejected TOTP code for ${username}`);
      return sendHtml(res, 200, totpPage(uid, username, { error: 'Invalid code' }));
    }
    pendingTotp.delete(uid);
    console.error(`login: ${username} signed in (password + TOTP)`);
    return provider.interactionFinished(req, res, {
      login: { accountId: username, amr: ['pwd', 'otp'] },
    }, { mergeWithLastSubmission: false });
  }

  // action === 'confirm'
  if (prompt.name !== 'consent') return sendHtml(res, 400, errorPage('Error', 'not a consent step'));
  const accountId = details.session?.accountId;
  if (!accountId) return sendHtml(res, 400, errorPage('Error', 'no signed-in account'));
  let grant = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
  if (!grant) grant = new provider.Grant({ accountId, clientId });
  const d = prompt.details ?? {};
  if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
  if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
  if (d.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const grantId = await grant.save();
  rememberConsent(accountId, clientId, grant.getOIDCScope().split(' '));
  console.error(`consent: ${accountId} allowed ${clientId} (${grant.getOIDCScope()})`);
  const consent = details.grantId === grantId ? {} : { grantId };
  return provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
}

// ---------------------------------------------------------------- test-control API
function revokeAccount(sub) {
  const grantIds = new Set();
  for (const [id, p] of liveOf('Grant')) if (p.accountId === sub) grantIds.add(id);
  for (const model of ['AccessToken', 'RefreshToken', 'AuthorizationCode']) {
    for (const [, p] of liveOf(model)) if (p.accountId === sub && p.grantId) grantIds.add(p.grantId);
  }
  for (const grantId of grantIds) {
    for (const model of ['AccessToken', 'RefreshToken', 'AuthorizationCode']) {
      new Adapter(model).revokeByGrantId(grantId);
    }
    dropKey(`Grant:${grantId}`);
  }
  // tokens that somehow have no grant
  for (const model of ['AccessToken', 'RefreshToken', 'AuthorizationCode']) {
    for (const [id, p] of [...liveOf(model)]) if (p.accountId === sub) dropKey(`${model}:${id}`);
  }
  return grantIds.size;
}

function endSessions(sub) {
  let n = 0;
  for (const [id, p] of [...liveOf('Session')]) {
    if (sub === undefined ? true : p.accountId === sub) {
      if (sub !== undefined || p.accountId) n += 1;
      dropKey(`Session:${id}`);
    }
  }
  return n;
}

async function handleTest(req, res, url) {
  const path = url.pathname.replace(/\/+$/, '');
  let m;
  if (req.method === 'POST') await readBody(req).catch(() => '');

  if (req.method === 'GET' && path === '/__test/stats') {
    return sendJson(res, 200, stats);
  }
  if (req.method === 'GET' && (m = /^\/__test\/users\/([^/]+)$/.exec(path))) {
    const username = decodeURIComponent(m[1]);
    if (!isUser(username)) return sendJson(res, 404, { error: 'no_such_user' });
    return sendJson(res, 200, {
      username,
      password: passwordOf(username),
      totp_seed: needsTotp(username) ? base32(seedBytes(username)) : null,
    });
  }
  if (req.method === 'POST' && (m = /^\/__test\/revoke\/([^/]+)$/.exec(path))) {
    const sub = decodeURIComponent(m[1]);
    const revoked = revokeAccount(sub);
    console.error(`test: revoked ${revoked} grant(s) of ${sub}`);
    return sendJson(res, 200, { revoked });
  }
  if (req.method === 'POST' && (m = /^\/__test\/end-sessions(?:\/([^/]+))?$/.exec(path))) {
    const sub = m[1] === undefined ? undefined : decodeURIComponent(m[1]);
    const ended = endSessions(sub);
    console.error(`test: ended ${ended} session(s)${sub ? ` of ${sub}` : ''}`);
    return sendJson(res, 200, { ended });
  }
  if (req.method === 'POST' && (m = /^\/__test\/markup\/([^/]+)$/.exec(path))) {
    const username = decodeURIComponent(m[1]);
    const changed = url.searchParams.get('changed') !== '0';
    if (changed) changedMarkup.add(username);
    else changedMarkup.delete(username);
    console.error(`test: sign-in page of ${username} ${changed ? 'changed' : 'restored'}`);
    return sendJson(res, 200, { username, changed });
  }
  if (req.method === 'POST' && path === '/__test/token-delay') {
    const ms = Number(url.searchParams.get('ms') ?? 0);
    if (!Number.isFinite(ms) || ms < 0) return sendJson(res, 400, { error: 'ms must be >= 0' });
    tokenDelayMs = Math.floor(ms);
    console.error(`test: token endpoint delay ${tokenDelayMs} ms`);
    return sendJson(res, 200, { token_delay_ms: tokenDelayMs });
  }
  if (req.method === 'POST' && path === '/__test/token-fail') {
    const count = Number(url.searchParams.get('count') ?? 1);
    const status = Number(url.searchParams.get('status') ?? 503);
    if (!Number.isInteger(count) || count < 0) return sendJson(res, 400, { error: 'count must be an integer >= 0' });
    if (!Number.isInteger(status) || status < 100 || status > 599) return sendJson(res, 400, { error: 'status must be an HTTP status' });
    tokenFail = { remaining: count, status };
    console.error(`test: next ${count} token request(s) fail with ${status}`);
    return sendJson(res, 200, { count, status });
  }
  return sendJson(res, 404, { error: 'not_found' });
}

// ---------------------------------------------------------------- router
const oidcCallback = provider.callback();

// Token requests presenting the same refresh token (or code) are handled one after
// the other, like a provider whose store consumes tokens atomically: of N concurrent
// uses exactly one succeeds and the others hit reuse detection. Without this, two
// truly concurrent requests could both pass the "already consumed?" check.
const tokenLocks = new Map(); // "refresh_token:<value>" | "code:<value>" -> tail promise

async function handleToken(req, res) {
  let fail;
  if (tokenFail.remaining > 0) {
    tokenFail.remaining -= 1;
    fail = tokenFail.status;
  }
  const raw = await readBody(req);
  if (tokenDelayMs > 0) await sleep(tokenDelayMs);
  if (fail !== undefined) {
    console.error(`token: injected failure ${fail}`);
    return sendJson(res, fail, { error: 'temporarily_unavailable' });
  }
  // The body stream is consumed: oidc-provider falls back to req.body (a string is parsed).
  req.body = raw;
  const form = new URLSearchParams(raw);
  const gt = form.get('grant_type');
  const key = gt === 'refresh_token' ? `refresh_token:${form.get('refresh_token')}`
    : gt === 'authorization_code' ? `code:${form.get('code')}` : undefined;
  const run = () => new Promise((resolve) => {
    res.once('finish', resolve);
    res.once('close', resolve);
    // A client that went away while its request waited (token-delay, or the
    // lock below) has closed the response already, and neither event fires
    // again: also settle when oidc-provider is done with the request, or the
    // token stays locked forever.
    Promise.resolve(oidcCallback(req, res)).finally(resolve);
  });
  if (!key) return run();
  const prev = tokenLocks.get(key) ?? Promise.resolve();
  const mine = prev.then(run);
  tokenLocks.set(key, mine);
  try {
    await mine;
  } finally {
    if (tokenLocks.get(key) === mine) tokenLocks.delete(key);
  }
  return undefined;
}

server.on('request', (req, res) => {
  let url;
  try {
    url = new URL(req.url, issuer);
  } catch {
    return sendJson(res, 400, { error: 'bad_request' });
  }
  let p;
  if (url.pathname.startsWith('/__test/')) p = handleTest(req, res, url);
  else if (url.pathname.startsWith('/interaction/')) p = handleInteraction(req, res, url);
  else if (url.pathname === '/token' && req.method === 'POST') p = handleToken(req, res);
  else return oidcCallback(req, res);
  p.catch((err) => {
    console.error(`error on ${req.method} ${url.pathname}:`, err);
    if (!res.headersSent) sendJson(res, err.status ?? 500, { error: 'server_error' });
    else res.destroy();
  });
});

for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.on(sig, () => { server.close(); process.exit(0); });
}

console.error(`oidc provider listening on ${issuer} (access ttl ${opts.accessTtl}s, redirect uris ${opts.redirectUris.join(' ')})`);
process.stdout.write(`READY ${issuer}\n`);
