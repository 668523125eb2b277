#!/usr/bin/env node
// End-to-end self check of provider.mjs + browse.mjs (no Rust involved).
//   node tests/oidc/selfcheck.mjs        (after `npm ci --prefix tests/oidc`)
// Exit 0 when every check passes; prints one line per check to stderr.

import { spawn, execFile } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'oidc-selfcheck-'));
const children = [];
let failures = 0;

function ok(cond, what, extra) {
  if (cond) console.error(`ok   ${what}`);
  else { failures += 1; console.error(`FAIL ${what}${extra === undefined ? '' : `: ${typeof extra === 'string' ? extra : JSON.stringify(extra)}`}`); }
}

function startProvider(args = []) {
  const t0 = Date.now();
  const child = spawn(process.execPath, [path.join(here, 'provider.mjs'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let errText = '';
  child.stderr.on('data', (d) => { errText += d; if (process.env.VERBOSE) process.stderr.write(`  [provider] ${d}`); });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /^READY (http:\/\/127\.0\.0\.1:\d+)\n/.exec(out);
      if (m) resolve({ issuer: m[1], child, ms: Date.now() - t0, stdout: () => out });
    });
    child.on('exit', (code) => reject(new Error(`provider exited ${code}: ${errText}`)));
  });
}

function browse(args) {
  return new Promise((resolve) => {
    execFile(process.execPath, [path.join(here, 'browse.mjs'), ...args], { timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (err.code ?? 99) : 0, stdout, stderr });
    });
  });
}

const b64url = (buf) => buf.toString('base64url');
function authorizeUrl(issuer, { clientId = 'daemon-web', redirectUri = 'http://127.0.0.1:18765/callback', scope = 'openid offline_access' } = {}) {
  const verifier = b64url(crypto.randomBytes(32));
  const challenge = b64url(crypto.createHash('sha256').update(verifier).digest());
  const state = b64url(crypto.randomBytes(12));
  const u = new URL('/auth', issuer);
  u.search = new URLSearchParams({
    response_type: 'code', client_id: clientId, redirect_uri: redirectUri, scope, state,
    code_challenge: challenge, code_challenge_method: 'S256',
  }).toString();
  return { url: u.href, verifier, state, redirectUri, clientId };
}

async function post(url, form, headers = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: form ? new URLSearchParams(form).toString() : undefined,
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, json, text };
}
const basic = (id, secret) => ({ authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}` });

async function login(issuer, user, opts = {}) {
  const a = authorizeUrl(issuer, opts);
  const args = [a.url, '--user', user, ...(opts.jar ? ['--jar', opts.jar] : []), ...(opts.extra ?? [])];
  const r = await browse(args);
  return { ...a, ...r };
}

async function exchange(issuer, a, redirectLine, auth = {}) {
  const code = new URL(redirectLine.trim()).searchParams.get('code');
  return post(`${issuer}/token`, {
    grant_type: 'authorization_code', code, redirect_uri: a.redirectUri, code_verifier: a.verifier,
    ...(auth.headers ? {} : { client_id: a.clientId }),
  }, auth.headers);
}
const refresh = (issuer, rt, clientId = 'daemon-web') => post(`${issuer}/token`, { grant_type: 'refresh_token', refresh_token: rt, client_id: clientId });
const introspect = (issuer, token) => post(`${issuer}/token/introspection`, { token }, basic('introspector', 'introspector-secret'));
const stats = async (issuer) => (await fetch(`${issuer}/__test/stats`)).json();

async function main() {
  // a tiny "farm" listening on the loopback redirect for --follow
  const farm = http.createServer((req, res) => { res.end('ok'); });
  await new Promise((r) => { farm.listen(0, '127.0.0.1', r); });
  const followUri = `http://127.0.0.1:${farm.address().port}/cb`;

  const A = await startProvider(['--port', '0', '--access-ttl', '5', '--redirect-uri', 'http://127.0.0.1:18765/callback', '--redirect-uri', followUri]);
  const iss = A.issuer;
  ok(A.ms < 1000, `provider READY in ${A.ms} ms (< 1000)`);
  ok(A.stdout() === `READY ${iss}\n`, 'stdout is exactly the READY line');

  const disco = await (await fetch(`${iss}/.well-known/openid-configuration`)).json();
  ok(disco.issuer === iss && disco.token_endpoint === `${iss}/token` && disco.introspection_endpoint && disco.revocation_endpoint, 'discovery', disco);
  ok(JSON.stringify(disco.code_challenge_methods_supported) === '["S256"]', 'only S256 PKCE');

  // ---- code flow with PKCE
  const jar = path.join(tmp, 'alice.jar');
  const a1 = await login(iss, 'alice', { jar });
  ok(a1.code === 0, 'browse alice exit 0', a1.stderr);
  const lines = a1.stdout.trim().split('\n');
  const redir = new URL(lines[0]);
  ok(lines.length === 1 && redir.href.startsWith('http://127.0.0.1:18765/callback?') && redir.searchParams.get('state') === a1.state
     && redir.searchParams.get('iss') === iss && redir.searchParams.get('code'), 'redirect has code, state, iss', a1.stdout);
  const t1 = await exchange(iss, a1, lines[0]);
  ok(t1.status === 200 && t1.json.access_token && t1.json.refresh_token && t1.json.id_token, 'code exchange gives access + refresh + id token', t1.text);
  ok(Math.abs(t1.json.expires_in - 5) <= 1, `expires_in ${t1.json.expires_in} ~ 5`);

  const i1 = await introspect(iss, t1.json.access_token);
  ok(i1.json?.active === true && i1.json.sub === 'alice', 'introspection active, sub alice', i1.text);
  const noAuth = await post(`${iss}/token/introspection`, { token: t1.json.access_token });
  ok(noAuth.status === 401 || noAuth.status === 400, `introspection without client auth refused (${noAuth.status})`);

  // ---- rotation, then reuse detection
  const r1 = await refresh(iss, t1.json.refresh_token);
  ok(r1.status === 200 && r1.json.refresh_token && r1.json.refresh_token !== t1.json.refresh_token && r1.json.access_token, 'refresh #1 rotates', r1.text);
  const r2 = await refresh(iss, r1.json.refresh_token);
  ok(r2.status === 200 && r2.json.refresh_token && r2.json.refresh_token !== r1.json.refresh_token, 'refresh #2 rotates', r2.text);
  ok((await introspect(iss, r2.json.access_token)).json.active === true, 'refreshed access token active');
  const replay = await refresh(iss, t1.json.refresh_token);
  ok(replay.status === 400 && replay.json.error === 'invalid_grant', 'replayed refresh token -> invalid_grant', replay.text);
  const newest = await refresh(iss, r2.json.refresh_token);
  ok(newest.status === 400 && newest.json.error === 'invalid_grant', 'newest refresh token dead after reuse (grant revoked)', newest.text);
  ok((await introspect(iss, r2.json.access_token)).json.active === false, 'access token of revoked grant inactive');
  let s = await stats(iss);
  ok(s.grants_revoked === 1 && s.refresh_grants.alice === 2 && s.code_grants.alice === 1 && s.refresh_failures.alice === 2, 'stats after reuse', s);

  // ---- live session + remembered consent; wrong password proves no login form was used
  const a2 = await login(iss, 'alice', { jar, extra: ['--password', 'not-used'] });
  ok(a2.code === 0 && a2.stdout.startsWith('http://127.0.0.1:18765/callback?code='), 'second browse with same jar goes straight to redirect', a2.stderr);
  const t2 = await exchange(iss, a2, a2.stdout);
  ok(t2.status === 200 && t2.json.refresh_token, 'exchange after live-session login (grant revoked earlier) gives refresh token', t2.text);

  const es = await post(`${iss}/__test/end-sessions`);
  ok(es.status === 200 && es.json.ended >= 1, 'end-sessions', es.json);
  const a3 = await login(iss, 'alice', { jar, extra: ['--password', 'wrong'] });
  ok(a3.code === 2 && /Invalid username or password/.test(a3.stderr) && !a3.stderr.includes('wrong'), 'after end-sessions the login page is back (wrong password -> exit 2, not echoed)', a3.stderr);
  const a4 = await login(iss, 'alice', { jar });
  ok(a4.code === 0, 'login again after end-sessions', a4.stderr);
  ok((await refresh(iss, t2.json.refresh_token)).status === 200, 'tokens outlive the browser session (expiresWithSession false)');

  // ---- per-account end-sessions
  const jarB = path.join(tmp, 'bob.jar');
  ok((await login(iss, 'bob', { jar: jarB })).code === 0, 'bob logs in');
  const esBob = await post(`${iss}/__test/end-sessions/bob`);
  ok(esBob.json.ended === 1, 'end-sessions/bob ended 1', esBob.json);
  ok((await login(iss, 'alice', { jar, extra: ['--password', 'x'] })).code === 0, 'alice session untouched by end-sessions/bob');
  ok((await login(iss, 'bob', { jar: jarB, extra: ['--password', 'x'] })).code === 2, 'bob session gone');

  // ---- TOTP
  const u = await (await fetch(`${iss}/__test/users/totp-carol`)).json();
  const expectSeed = Buffer.from(crypto.createHash('sha1').update('seed:totp-carol').digest());
  ok(u.username === 'totp-carol' && u.password === 'totp-carol-password' && typeof u.totp_seed === 'string' && u.totp_seed.length === 32, 'users/totp-carol', u);
  ok(expectSeed.length === 20, 'seed is 20 bytes');
  const plain = await (await fetch(`${iss}/__test/users/alice`)).json();
  ok(plain.totp_seed === null, 'users/alice has no TOTP seed');
  const c1 = await login(iss, 'totp-carol', { jar: path.join(tmp, 'carol.jar') });
  ok(c1.code === 0, 'totp user passes with the right code (seed fetched)', c1.stderr);
  const c1b = await login(iss, 'totp-carol', { extra: ['--totp-seed', u.totp_seed] });
  ok(c1b.code === 0, 'totp user passes with --totp-seed', c1b.stderr);
  const c2 = await login(iss, 'totp-carol', { extra: ['--totp-seed', 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'] });
  ok(c2.code === 2 && /Invalid code/.test(c2.stderr), 'totp user fails with a wrong code', c2.stderr);
  const tc = await exchange(iss, c1, c1.stdout);
  ok(tc.status === 200, 'totp user tokens');

  // ---- wrong password, unknown user shape, denied consent
  const w = await login(iss, 'dave', { extra: ['--password', 'nope'] });
  ok(w.code === 2 && w.stdout === '', 'wrong password -> exit 2, nothing on stdout', w.stderr);
  const bad = await login(iss, 'Not A User!');
  ok(bad.code === 2, 'invalid username -> exit 2');

  // ---- token-fail: no token touched
  const e1 = await login(iss, 'erin');
  const te = await exchange(iss, e1, e1.stdout);
  ok((await post(`${iss}/__test/token-fail?count=2&status=503`)).status === 200, 'token-fail set');
  const f1 = await refresh(iss, te.json.refresh_token);
  const f2 = await refresh(iss, te.json.refresh_token);
  ok(f1.status === 503 && f2.status === 503 && f1.json.error === 'temporarily_unavailable', 'two injected 503s', [f1.status, f2.status, f1.text]);
  const f3 = await refresh(iss, te.json.refresh_token);
  ok(f3.status === 200, 'third request goes through with the same (untouched) refresh token', f3.text);

  // ---- token-delay
  await post(`${iss}/__test/token-delay?ms=700`);
  let t0 = Date.now();
  const d1 = await refresh(iss, f3.json.refresh_token);
  const took = Date.now() - t0;
  ok(d1.status === 200 && took >= 690, `token-delay 700 ms (took ${took} ms)`);
  await post(`${iss}/__test/token-delay?ms=0`);
  t0 = Date.now();
  const d2 = await refresh(iss, d1.json.refresh_token);
  ok(d2.status === 200 && Date.now() - t0 < 300, `token-delay off (took ${Date.now() - t0} ms)`);

  // ---- revoke one account
  const g1 = await login(iss, 'gina');
  const tg = await exchange(iss, g1, g1.stdout);
  const rv = await post(`${iss}/__test/revoke/erin`);
  ok(rv.status === 200 && rv.json.revoked === 1, 'revoke/erin revoked 1 grant', rv.json);
  const afterRv = await refresh(iss, d2.json.refresh_token);
  ok(afterRv.status === 400 && afterRv.json.error === 'invalid_grant', 'erin refresh token dead after revoke', afterRv.text);
  ok((await introspect(iss, d2.json.access_token)).json.active === false, 'erin access token dead after revoke');
  ok((await refresh(iss, tg.json.refresh_token)).status === 200, 'gina unaffected by revoke/erin');
  s = await stats(iss);
  ok(s.refresh_failures.erin === 1 && s.grants_revoked === 1, 'revoked-token failure counted for erin; test revocations not in grants_revoked', s);
  // relogin after revoke: remembered consent, live session -> no forms
  const e2 = await login(iss, 'erin', { extra: [] });
  ok(e2.code === 0, 'erin can log in again after revoke');

  // ---- authorization code replay also revokes the grant
  const l1 = await login(iss, 'leo');
  const tl = await exchange(iss, l1, l1.stdout);
  const again = await exchange(iss, l1, l1.stdout);
  ok(again.status === 400 && again.json.error === 'invalid_grant', 'code replay is invalid_grant');
  ok((await refresh(iss, tl.json.refresh_token)).status === 400, 'code replay revoked the grant (refresh token dead)');
  ok((await stats(iss)).grants_revoked === 2, 'code replay counted in grants_revoked');

  // ---- truly concurrent uses of one refresh token: one wins, reuse detection kills the grant
  const m1 = await login(iss, 'mia');
  const tm = await exchange(iss, m1, m1.stdout);
  const par = await Promise.all(Array.from({ length: 8 }, () => refresh(iss, tm.json.refresh_token)));
  const wins = par.filter((r) => r.status === 200);
  ok(wins.length === 1 && par.filter((r) => r.json?.error === 'invalid_grant').length === 7, '8 concurrent refreshes: 1 ok, 7 invalid_grant', par.map((r) => r.status));
  ok(wins.length === 1 && (await refresh(iss, wins[0].json.refresh_token)).status === 400, 'winner\'s new refresh token dead too');
  ok((await stats(iss)).grants_revoked === 3, 'concurrent reuse counted in grants_revoked');

  // ---- confidential client (basic and post)
  const k1 = await login(iss, 'hank', { clientId: 'daemon-confidential' });
  const tk1 = await exchange(iss, k1, k1.stdout, { headers: basic('daemon-confidential', 'daemon-confidential-secret') });
  ok(tk1.status === 200 && tk1.json.refresh_token, 'daemon-confidential client_secret_basic', tk1.text);
  const rk = await post(`${iss}/token`, {
    grant_type: 'refresh_token', refresh_token: tk1.json.refresh_token, client_id: 'daemon-confidential', client_secret: 'daemon-confidential-secret',
  });
  ok(rk.status === 200 && rk.json.refresh_token !== tk1.json.refresh_token, 'daemon-confidential client_secret_post refresh rotates', rk.text);
  const wrongSecret = await post(`${iss}/token`, { grant_type: 'refresh_token', refresh_token: rk.json.refresh_token }, basic('daemon-confidential', 'nope'));
  ok(wrongSecret.status === 401 && wrongSecret.json.error === 'invalid_client', 'wrong client secret -> invalid_client');

  // ---- PKCE is required; unregistered redirect refused
  const noPkce = new URL('/auth', iss);
  noPkce.search = new URLSearchParams({ response_type: 'code', client_id: 'daemon-web', redirect_uri: 'http://127.0.0.1:18765/callback', scope: 'openid', state: 'x' }).toString();
  const np = await browse([noPkce.href, '--user', 'alice']);
  ok(np.code === 2 && /PKCE/.test(np.stderr), 'authorize without PKCE refused', np.stderr);
  const wr = await login(iss, 'alice', { redirectUri: 'http://127.0.0.1:1/elsewhere' });
  ok(wr.code === 2, 'unregistered redirect_uri refused', wr.stderr);

  // ---- --follow
  const fo = await login(iss, 'ivan', { redirectUri: followUri, extra: ['--follow'] });
  ok(fo.code === 0 && /\nFOLLOWED 200\n$/.test(fo.stdout), '--follow prints FOLLOWED 200', fo.stdout + fo.stderr);
  const foBad = await login(iss, 'ivan', { extra: ['--follow'] }); // nothing listens on 18765
  ok(foBad.code === 1 && /^http:\/\/127\.0\.0\.1:18765\/callback\?code=/.test(foBad.stdout), '--follow with nothing listening -> exit 1', foBad.stdout + foBad.stderr);

  // ---- two providers, one jar: cookie names must not clash
  const B = await startProvider(['--access-ttl', '1']);
  ok(B.issuer !== iss, 'second provider on another port');
  const shared = path.join(tmp, 'shared.jar');
  ok((await login(iss, 'judy', { jar: shared })).code === 0, 'judy @A');
  ok((await login(B.issuer, 'judy', { jar: shared })).code === 0, 'judy @B');
  ok((await login(iss, 'judy', { jar: shared, extra: ['--password', 'x'] })).code === 0, 'judy @A session survives login @B');
  ok((await login(B.issuer, 'judy', { jar: shared, extra: ['--password', 'x'] })).code === 0, 'judy @B session survives too');

  // ---- access token expiry (B has --access-ttl 1)
  const kb = await login(B.issuer, 'kim');
  const tb = await exchange(B.issuer, kb, kb.stdout);
  ok(tb.json.expires_in === 1, 'access-ttl 1 -> expires_in 1', tb.json);
  await new Promise((r) => { setTimeout(r, 2100); });
  ok((await introspect(B.issuer, tb.json.access_token)).json.active === false, 'access token inactive after its ttl');
  ok((await refresh(B.issuer, tb.json.refresh_token)).status === 200, 'refresh token still fine');

  farm.close();
}

try {
  await main();
} catch (err) {
  failures += 1;
  console.error('FAIL exception', err);
} finally {
  for (const c of children) c.kill('SIGTERM');
  fs.rmSync(tmp, { recursive: true, force: true });
}
console.error(failures ? `${failures} check(s) FAILED` : 'all checks passed');
process.exit(failures ? 1 : 0);
