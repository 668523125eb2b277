// relogin-farm admin page: plain JS, no build step, no external resources.
// The admin token lives in sessionStorage only and travels only in the
// Authorization header, never in a URL. Text from the API is always inserted
// with textContent (see h()), never as HTML.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = 'relogin-farm.admin-token';
  // States: healthy, cooling_down, refreshing, expired, pending_login, needs_relogin, needs_human, disabled.
  const ATTENTION = ['pending_login', 'expired', 'needs_relogin', 'needs_human'];
  const stateText = (s) => String(s).replace(/^./, (c) => c.toUpperCase()).replace(/_/g, ' '); // cooling_down → Cooling down
  let token = sessionStorage.getItem(TOKEN_KEY);
  // Last data from the API, plus UI state.
  const S = { accounts: [], providers: [], clients: [], usage: null, tab: 'accounts', rendered: '', login: null };

  // ---- helpers -------------------------------------------------------------

  /** Builds an element. attrs: on* = listener, text = textContent, null/false = left out. */
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'text') el.textContent = v;
      else el.setAttribute(k, v === true ? '' : v);
    }
    for (const k of kids.flat(3)) if (k != null && k !== false) el.append(k);
    return el;
  }
  const fmtTime = (iso) => new Date(iso).toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' });
  const when = (iso) => h('time', { datetime: iso, text: fmtTime(iso) });
  function fmtSpan(ms) {
    let s = Math.round(Math.abs(ms) / 1000);
    const d = Math.floor(s / 86400), hr = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60, p = (n) => String(n).padStart(2, '0');
    s %= 60;
    return d ? `${d}d ${hr}h` : hr ? `${hr}h ${p(m)}m` : m ? `${m}m ${p(s)}s` : `${s}s`;
  }
  /** Live countdown to iso and live "… ago" since iso; tick() keeps their text current. */
  const countdown = (iso, past) => h('time', { datetime: iso, 'data-until': iso, 'data-past': past, title: fmtTime(iso) });
  const ago = (iso) => (iso ? h('time', { datetime: iso, 'data-since': iso, title: fmtTime(iso) }) : '—');
  function tick() {
    const now = Date.now();
    for (const el of document.querySelectorAll('[data-until]')) {
      const left = Date.parse(el.dataset.until) - now;
      el.textContent = left > 0 ? fmtSpan(left) : el.dataset.past;
      el.classList.toggle('past', left <= 0);
      el.classList.toggle('soon', left > 0 && left < 60000);
    }
    for (const el of document.querySelectorAll('[data-since]')) {
      const d = now - Date.parse(el.dataset.since);
      el.textContent = d < 5000 ? 'just now' : `${fmtSpan(d)} ago`;
    }
  }
  const badge = (state) => h('span', { class: `badge s-${state}`, 'data-state': state, text: stateText(state) });
  const NUMS = new Set(['Leases', 'OK', 'Rate limited', 'Unauthorized', 'Error', 'Delivered', 'Failed attempts', 'Given up', 'Size']);
  const head = (...cols) => h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col', class: NUMS.has(c) && 'num', text: c }))));
  const emptyRow = (n, text) => h('tr', {}, h('td', { colspan: n, class: 'empty', text }));

  // ---- messages: errors in #alerts (role=alert), confirmations in #notes (role=status) ----

  function showAlert(text) {
    const box = $('alerts');
    if (box.lastElementChild?.dataset.text === text) return;
    const item = h('div', { class: 'alert', 'data-text': text }, h('span', { text }),
      h('button', { type: 'button', class: 'quiet x', 'aria-label': 'Dismiss', text: '×', onclick: () => item.remove() }));
    box.append(item);
    while (box.children.length > 4) box.firstElementChild.remove();
  }
  function note(text) {
    $('notes').textContent = text;
    clearTimeout(note.timer);
    note.timer = setTimeout(() => ($('notes').textContent = ''), 8000);
  }
  const describe = (e) => (e.status ? `${e.message} (${e.code}, HTTP ${e.status})` : e.message);
  const showError = (what, e) => e.silent || showAlert(`${what}: ${describe(e)}`);

  // ---- API -----------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, detail, silent) {
      super(detail);
      Object.assign(this, { status, code, silent });
    }
  }
  const authHeader = () => ({ Authorization: `Bearer ${token}` });

  /** Calls the farm; errors carry the body's {"error","detail"}. A 401/403 signs out ("token refused"). */
  async function api(method, path, body, type = 'application/json') {
    if (!token) throw new ApiError(0, 'signed_out', 'signed out', true);
    const headers = { ...authHeader(), Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = type;
    let res;
    try {
      res = await fetch(path, { method, headers, cache: 'no-store', body: typeof body === 'object' ? JSON.stringify(body) : body });
    } catch (e) {
      throw new ApiError(0, 'network', `the farm did not answer (${e.message})`);
    }
    if (res.status === 401 || res.status === 403) {
      refused();
      throw new ApiError(res.status, 'unauthorized', 'token refused', true);
    }
    if (!res.ok) {
      const j = await res.json().catch(() => ({}));
      throw new ApiError(res.status, j.error || `http_${res.status}`, j.detail || res.statusText || 'request failed');
    }
    if (res.status === 204) return null;
    return (res.headers.get('content-type') || '').includes('json') ? res.json() : res.text();
  }

  /** Runs a user action, marking the button busy (not disabled, so it keeps focus) and reporting errors. */
  async function act(btn, what, fn) {
    if (btn?.getAttribute('aria-busy') === 'true') return;
    btn?.setAttribute('aria-busy', 'true');
    try {
      return await fn();
    } catch (e) {
      showError(what, e);
    } finally {
      btn?.removeAttribute('aria-busy');
    }
  }

  // ---- sign in / out -------------------------------------------------------

  async function signIn(t) {
    token = t;
    $('signin-msg').textContent = '';
    try {
      S.providers = await api('GET', '/api/providers');
    } catch (e) {
      if (!e.silent) $('signin-msg').textContent = describe(e);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, t);
    $('signin-token').value = '';
    $('add-provider').replaceChildren(...S.providers.map((p) => h('option', { value: p.name, text: p.name })));
    $('signin').hidden = true;
    $('tabs').hidden = $('signout-btn').hidden = $('live-status').hidden = false;
    const loaded = reload();
    const want = location.hash.slice(1);
    selectTab(Object.hasOwn(TABS, want) ? want : 'accounts');
    startLive();
    // `#record=ID` (the link `account record` prints without a display): record that account's login.
    const browserOf = /^record=(\d+)$/.exec(want);
    if (browserOf) {
      await loaded;
      const a = S.accounts.find((x) => String(x.id) === browserOf[1]);
      if (a) act(null, `Record a login for ${a.label}`, () => remoteBrowser(a, 'record'));
    }
  }

  /** Back to the sign-in form, forgetting the token and everything shown. */
  function signOut(message) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    stopLive();
    for (const d of document.querySelectorAll('dialog[open]')) d.close();
    for (const id of ['accounts-body', 'events-list', 'usage-accounts', 'usage-clients', 'usage-recent', 'clients-table', 'webhooks-table', 'backups-table', 'alerts'])
      $(id).replaceChildren();
    Object.assign(S, { accounts: [], clients: [], usage: null, rendered: '', login: null });
    hideKey();
    $('webhooks').hidden = true;
    live.seen.clear();
    live.lastId = null;
    $('tabs').hidden = $('signout-btn').hidden = $('live-status').hidden = true;
    for (const p of document.querySelectorAll('[role=tabpanel]')) p.hidden = true;
    $('signin').hidden = false;
    $('signin-msg').textContent = message;
    document.title = 'relogin-farm admin';
    $('signin-token').focus();
  }
  const refused = () => token && signOut('token refused');

  // ---- tabs (roving tabindex; arrow keys, Home, End) -----------------------

  const TABS = { accounts: () => loading || reload(), usage: () => loadUsage(), clients: () => loadClients(), events: () => Promise.all([loadWebhooks(), loadBackups()]) };
  const tabButtons = () => [...document.querySelectorAll('[role=tab]')];
  function selectTab(name, focus) {
    for (const b of tabButtons()) {
      const on = b.dataset.tab === name;
      b.setAttribute('aria-selected', on);
      b.tabIndex = on ? 0 : -1;
      $(b.getAttribute('aria-controls')).hidden = !on;
      if (on && focus) b.focus();
    }
    S.tab = name;
    history.replaceState(null, '', `#${name}`);
    TABS[name]();
  }

  // ---- accounts ------------------------------------------------------------

  let loading = null, again = false;
  /** Reloads accounts and usage counts; calls while one is in flight coalesce into one more. */
  function reload() {
    if (loading) return (again = true), loading;
    loading = loadAccounts().catch((e) => showError('Loading accounts', e)).finally(() => {
      loading = null;
      if (again && token) (again = false), reload();
    });
    return loading;
  }
  async function loadAccounts() {
    const [accounts, usage] = await Promise.all([api('GET', '/api/accounts'), api('GET', '/api/usage').catch(() => null)]);
    S.accounts = accounts.sort((a, b) => a.provider.localeCompare(b.provider) || a.priority - b.priority || a.id - b.id);
    if (usage) S.usage = usage;
    renderAccounts();
    watchLogin();
    if (usage && S.tab === 'usage') renderUsage();
  }

  /** Whether the browser relogin actions apply: the farm says so on the account or its provider. */
  const browserFor = (a) => a.browser === true || S.providers.some((p) => p.name === a.provider && p.browser === true);
  const hourLeases = (id) => S.usage?.per_account.find((r) => r.id === id)?.last_hour.leases ?? 0;
  const accountName = (id) => S.accounts.find((a) => a.id === id)?.label ?? `account #${id}${S.accounts.length ? ' (removed)' : ''}`;

  function renderAccounts() {
    const key = JSON.stringify([S.accounts, S.accounts.map((a) => hourLeases(a.id))]);
    if (key === S.rendered) return; // unchanged: leave the DOM (and focus) alone
    S.rendered = key;
    const body = $('accounts-body');
    const restore = body.contains(document.activeElement) && focusRestorer();
    const unfolded = [...body.querySelectorAll('details[open]')].map((d) => d.closest('tr').dataset.accountId);
    body.replaceChildren(...S.accounts.map(accountRow));
    for (const id of unfolded) body.querySelector(`tr[data-account-id="${id}"] details`)?.setAttribute('open', '');
    if (restore) restore();
    $('accounts-empty').hidden = S.accounts.length > 0;
    const counts = {};
    for (const a of S.accounts) counts[a.state] = (counts[a.state] || 0) + 1;
    $('accounts-summary').replaceChildren(...Object.entries(counts).map(([s, n]) => h('span', {}, `${n} `, badge(s))));
    const need = S.accounts.filter((a) => ATTENTION.includes(a.state)).length;
    document.title = `${need ? `(${need}) ` : ''}relogin-farm admin`;
    for (const el of document.querySelectorAll('.who')) el.textContent = accountName(Number(el.dataset.accountId));
    // A digest's link (`/admin#account-N`) shows that account's row, with its "Browser" button, once.
    const linked = !S.linkedShown && body.querySelector('tr.linked');
    if (linked) (S.linkedShown = true), linked.scrollIntoView({ block: 'center' });
    tick();
  }

  function accountRow(a) {
    const td = (label, ...kids) => h('td', { 'data-label': label }, h('div', {}, ...kids)); // one grid item in phone cards
    const e = a.last_error, labelId = `acct-${a.id}-label`;
    const btn = (action, text, cls) => h('button', { type: 'button', 'data-action': action, class: cls, 'aria-describedby': labelId, text });
    const linked = location.hash === `#account-${a.id}` ? ' linked' : '';
    return h('tr', { 'data-account-id': a.id, class: `state-${a.state}${linked}` },
      td('Provider', a.provider, a.identity && h('div', { class: 'identity muted', 'data-identity': a.identity.value, title: `logged in as ${a.identity.value}`, text: a.identity.display || a.identity.value })),
      h('th', { scope: 'row', id: labelId, 'data-label': 'Label', text: a.label }),
      td('State', badge(a.state)),
      td('Token expires in', a.expires_at ? countdown(a.expires_at, 'expired') : '—'),
      td('Cooldown until', a.cooldown_until ? [when(a.cooldown_until), ' (', countdown(a.cooldown_until, 'over'), ')'] : '—'),
      td('Priority', String(a.priority)),
      td('Enabled', a.enabled ? 'yes' : 'no'),
      td('Last used', ago(a.last_used_at)),
      td('Leases 1 h / 24 h', `${hourLeases(a.id)} / ${a.leases_24h}`),
      td('Quota', quotaCell(a.quota)),
      td('Last error', e ? h('span', { class: 'err' }, `${e.message} · `, ago(e.at), e.screenshot && [' ', btn('screenshot', 'Screenshot')]) : '—'),
      td('Actions', h('div', { class: 'actions' },
        btn('refresh', 'Refresh now'),
        btn('login', 'Log in'),
        browserFor(a) && [btn('browser', 'Browser'), btn('relogin', "Log in with the farm's browser"), btn('script', 'Attach script'), btn('secret', 'Set secret')],
        btn('toggle', a.enabled ? 'Disable' : 'Enable'),
        btn('priority', 'Priority…'),
        btn('activate', 'Make active'),
        btn('remove', 'Remove', 'danger'))));
  }

  /** The account's quota as the farm read it: per rate-limit window the share used and a countdown to its
   * reset, and the usage endpoint's last answer (proxy.usage_url) folded. */
  function quotaCell(q) {
    if (!q) return '—';
    const windows = (q.windows || []).map((w) => {
      const used = w.used != null && `${Math.round(w.used * 100)}% used`;
      const left = w.remaining != null && (w.limit != null ? `${w.remaining} of ${w.limit} left` : `${w.remaining} left`);
      return h('div', { class: 'quota', 'data-window': w.name, 'data-used': w.used ?? '' },
        h('span', { class: 'qname', text: w.name }), ' ',
        w.used != null && [h('meter', { min: 0, max: 1, low: 0.7, high: 0.9, optimum: 0, value: Math.min(w.used, 1), 'aria-hidden': 'true' }), ' '],
        h('span', { class: 'qused', text: [used, left].filter(Boolean).join(', ') }),
        w.resets_at && [' · reset in ', countdown(w.resets_at, 'passed')]);
    });
    if (!windows.length && q.resets_at) windows.push(h('div', { class: 'quota' }, 'reset in ', countdown(q.resets_at, 'passed')));
    const u = q.usage;
    const usage = u && h('details', { class: 'quota-usage' },
      h('summary', {}, 'Usage endpoint · ', ago(u.at)),
      h('pre', { text: JSON.stringify(u.answer, null, 1) }));
    return windows.length || usage ? [windows, usage] : h('span', { class: 'muted' }, 'no limits read · ', ago(q.at));
  }

  /** Row actions by data-action; each gets the account and the button pressed. */
  const ACTIONS = {
    refresh: (a, b) => act(b, `Refresh ${a.label}`, async () => {
      const v = await api('POST', `/api/accounts/${a.id}/refresh`);
      const how = { refreshed: 'new token', already_fresh: 'already fresh' }[v.refresh] || v.refresh || 'done';
      note(`${a.label} refreshed (${how}); now ${stateText(v.state)}.`);
      await reload();
    }),
    login: (a, b) => act(b, `Log in ${a.label}`, () => startLogin(a)),
    toggle: (a, b) => patch(a, b, { enabled: !a.enabled }, a.enabled ? 'disabled' : 'enabled'),
    priority: async (a, b) => {
      const v = await ask({ title: `Priority of ${a.label}`, text: 'Lower numbers are preferred by the fill-first strategy.', ok: 'Save',
        fields: [{ name: 'priority', label: 'Priority', type: 'number', value: a.priority }] });
      if (v) patch(a, b, { priority: Number(v.priority) }, `priority ${v.priority}`);
    },
    // Top of fill-first: one less than the lowest priority among the provider's accounts.
    activate: (a, b) => {
      const prios = S.accounts.filter((x) => x.provider === a.provider).map((x) => x.priority), min = Math.min(...prios);
      if (a.priority === min && prios.filter((p) => p === min).length === 1) return note(`${a.label} is already first.`);
      patch(a, b, { priority: min - 1 }, `now first (priority ${min - 1})`);
    },
    remove: async (a, b) => {
      if (await ask({ title: 'Remove account?', danger: true, ok: 'Remove',
        text: `Remove ${a.label} (${a.provider}) for good? Its tokens are deleted; this cannot be undone.` }))
        act(b, `Remove ${a.label}`, async () => {
          await api('DELETE', `/api/accounts/${a.id}`);
          note(`${a.label} removed.`);
          await reload();
        });
    },
    screenshot: (a, b) => act(b, 'Screenshot', () => showScreenshot(a.last_error.screenshot)),
    relogin: (a, b) => browserRelogin(a, b),
    browser: (a, b) => act(b, `Browser for ${a.label}`, () => remoteBrowser(a)),
    script: (a, b) => attachScript(a, b),
    secret: (a, b) => setSecret(a, b),
  };
  const patch = (a, b, body, what) => act(b, `Change ${a.label}`, async () => {
    await api('PATCH', `/api/accounts/${a.id}`, body);
    note(`${a.label}: ${what}.`);
    await reload();
  });

  // ---- HOOKS for the browser relogin (shown when an account or provider has browser: true;
  //      the routes may not exist yet, errors then show in #alerts) -----------

  /** "Log in with the farm's browser" → POST /api/accounts/{id}/relogin. */
  const browserRelogin = (a, b) => act(b, `Browser login for ${a.label}`, async () => {
    await api('POST', `/api/accounts/${a.id}/relogin`);
    note(`${a.label}: the farm's browser is logging in.`);
    await reload();
  });
  /** "Attach script" → PUT /api/accounts/{id}/script with the TOML text. */
  async function attachScript(a, b) {
    const v = await ask({ title: `Login script for ${a.label}`, ok: 'Attach', text: "The TOML script the farm's browser follows to log in.",
      fields: [{ name: 'script', label: 'Script (TOML)', type: 'textarea' }] });
    if (v) act(b, `Attach script to ${a.label}`, async () => {
      await api('PUT', `/api/accounts/${a.id}/script`, v.script, 'application/toml');
      note(`${a.label}: script attached.`);
    });
  }
  /** "Set secret" → PUT /api/accounts/{id}/secrets/{name} {"value"}. */
  async function setSecret(a, b) {
    const v = await ask({ title: `Secret for ${a.label}`, ok: 'Save', text: 'Stored encrypted; never shown again.',
      fields: [{ name: 'name', label: 'Name (e.g. password, totp)' }, { name: 'value', label: 'Value', type: 'password' }] });
    if (v) act(b, `Set secret on ${a.label}`, async () => {
      await api('PUT', `/api/accounts/${a.id}/secrets/${encodeURIComponent(v.name)}`, { value: v.value });
      note(`${a.label}: secret ${v.name} saved.`);
    });
  }
  /** "Browser": the farm's own browser on the account's profile (POST …/browser/session, then its WebSocket,
   * authenticated by the first message: the token is never in the URL). A stuck account is taken over; one
   * without a script is recorded; otherwise a look around. Taps and clicks become clicks. */
  async function remoteBrowser(a, asked) {
    const mode = asked || (a.state === 'needs_human' ? 'takeover' : a.has_login_script ? 'view' : 'record');
    const width = Math.max(320, Math.min(1280, Math.floor(window.innerWidth - 40)));
    const height = Math.max(320, Math.min(900, Math.floor(window.innerHeight * 0.65)));
    const s = await api('POST', `/api/accounts/${a.id}/browser/session`, { mode, width, height });
    const canvas = $('remote-canvas'), ctx = canvas.getContext('2d'), state = $('remote-state');
    Object.assign(canvas, { width, height });
    $('remote-url').textContent = '';
    state.textContent = `${mode}: connecting…`;
    $('remote-script').hidden = $('remote-save').hidden = $('remote-record').hidden = $('remote-failure').hidden = true;
    let recordNext = false, ended;
    // The proof needs the profile: it waits for the session's end (`closed`, or the socket gone).
    const sessionEnded = new Promise((resolve) => (ended = resolve));
    const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/api/browser/sessions/${encodeURIComponent(s.session_id)}/ws`);
    ws.binaryType = 'blob';
    const send = (m) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify(m));
    ws.onopen = () => { ws.send(JSON.stringify({ type: 'auth', token })); state.textContent = `${mode}`; };
    ws.onmessage = async (ev) => {
      if (typeof ev.data !== 'string') {
        const frame = await createImageBitmap(ev.data);
        if (canvas.width !== frame.width || canvas.height !== frame.height) Object.assign(canvas, { width: frame.width, height: frame.height });
        ctx.drawImage(frame, 0, 0);
        return frame.close();
      }
      const m = JSON.parse(ev.data);
      if (m.type === 'url') $('remote-url').textContent = m.url;
      else if (m.type === 'done') {
        state.textContent = `${m.detail} — ${stateText(m.account_state)}`;
        // A rescued login: the path the person took is worth a script.
        if (mode === 'takeover') $('remote-record').hidden = false;
      } else if (m.type === 'failure') showFailure(m);
      else if (m.type === 'error') state.textContent = m.detail;
      else if (m.type === 'closed') (state.textContent = `Session ended: ${m.reason}`), ended();
      else if (m.type === 'script') {
        Object.assign($('remote-script'), { value: m.toml, hidden: false });
        $('remote-save').hidden = false;
      }
    };
    ws.onclose = (ev) => { if (ev.code >= 4000) state.textContent = `Closed: ${ev.reason}`; ended(); };
    const at = (e) => {
      const r = canvas.getBoundingClientRect();
      return { x: (e.clientX - r.left) * canvas.width / r.width, y: (e.clientY - r.top) * canvas.height / r.height };
    };
    let moved = 0;
    canvas.onpointerup = (e) => { send({ type: 'click', ...at(e), button: ['left', 'middle', 'right'][e.button] || 'left' }); canvas.focus(); };
    canvas.onpointermove = (e) => { if (e.pointerType === 'mouse' && e.timeStamp - moved > 50) { moved = e.timeStamp; send({ type: 'move', ...at(e) }); } };
    canvas.onwheel = (e) => { e.preventDefault(); send({ type: 'scroll', dx: e.deltaX, dy: e.deltaY }); };
    canvas.oncontextmenu = (e) => e.preventDefault();
    canvas.onkeydown = (e) => {
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      e.preventDefault();
      send(e.key.length === 1 ? { type: 'type', text: e.key } : { type: 'key', key: e.key });
    };
    $('remote-type').onkeydown = (e) => {
      if (e.key !== 'Enter') return;
      e.preventDefault();
      if (e.target.value) send({ type: 'type', text: e.target.value });
      e.target.value = '';
      send({ type: 'key', key: 'Enter' });
    };
    // Saved, then proved: the farm replays it headless in a throwaway profile (no cookies).
    $('remote-save').onclick = () => act($('remote-save'), `Save script of ${a.label}`, async () => {
      await api('PUT', `/api/accounts/${a.id}/script`, $('remote-script').value, 'application/toml');
      state.textContent = 'Script saved; proving it in a fresh browser profile…';
      await sessionEnded;
      try {
        const p = await api('POST', `/api/accounts/${a.id}/script/prove`);
        state.textContent = `Proved in a fresh browser profile (no cookies): ${stateText(p.state)}; script lines run: ${p.relogin.lines_run.join(', ')}`;
      } catch (e) {
        state.textContent = `The script is saved, but its proof failed: ${describe(e)}`;
      }
    });
    $('remote-record').onclick = () => { recordNext = true; $('remote-dialog').close(); };
    await openDialog($('remote-dialog'), canvas);
    ws.close();
    await api('DELETE', `/api/accounts/${a.id}/browser/session`).catch(() => {});
    await reload();
    if (recordNext) await remoteBrowser(a, 'record');
  }
  /** A takeover's first message: where the script stopped, and the page it saw then. */
  async function showFailure(m) {
    const at = m.step ? `Step ${m.step} (line ${m.line}) failed` : 'The last relogin failed';
    $('remote-failure-text').textContent = `${at}: ${m.detail}`;
    $('remote-failure').hidden = false;
    const img = $('remote-failure-shot');
    img.hidden = true;
    if (!m.screenshot || !/^\/(?!\/)/.test(m.screenshot)) return;
    const res = await fetch(m.screenshot, { headers: authHeader(), cache: 'no-store' }).catch(() => null);
    if (!res || !res.ok) return;
    if (img.src.startsWith('blob:')) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(await res.blob());
    img.hidden = false;
  }
  /** last_error.screenshot: a data:image URL, or a farm path fetched with the token (never sent elsewhere). */
  async function showScreenshot(src) {
    let url = src;
    if (!/^data:image\//.test(src)) {
      if (!/^\/(?!\/)/.test(src)) throw new ApiError(0, 'screenshot', 'unexpected screenshot address');
      const res = await fetch(src, { headers: authHeader(), cache: 'no-store' });
      if (!res.ok) throw new ApiError(res.status, 'screenshot', 'the screenshot could not be loaded');
      url = URL.createObjectURL(await res.blob());
    }
    $('shot-img').src = url;
    await openDialog($('shot-dialog'));
    if (url !== src) URL.revokeObjectURL(url);
  }

  // ---- login dialog --------------------------------------------------------

  async function startLogin(a) {
    const r = await api('POST', `/api/accounts/${a.id}/login`);
    // A device login (user_code) has a page to enter the code at, no authorize URL.
    const url = new URL(r.user_code ? r.verification_uri : r.authorize_url);
    if (!/^https?:$/.test(url.protocol)) throw new ApiError(0, 'bad_url', 'the farm returned an unexpected sign-in URL');
    S.login = { id: a.id, generation: a.generation, needed: ATTENTION.includes(a.state) };
    $('login-label').textContent = a.label;
    const text = r.user_code
      ? `Open ${url.href} and enter the code ${r.user_code} ↗`
      : `Open the sign-in page at ${url.host} ↗`;
    Object.assign($('login-url'), { href: url.href, textContent: text });
    $('login-listening').hidden = !r.listening;
    $('login-redirect').value = $('login-msg').textContent = '';
    openDialog($('login-dialog'), $('login-url')).then(() => (S.login = null));
  }
  async function completeLogin() {
    const url = $('login-redirect').value.trim();
    if (!url) return ($('login-msg').textContent = 'Paste the URL the browser was redirected to first.');
    try {
      const v = await api('POST', `/api/accounts/${S.login.id}/login/complete`, { redirect_url: url });
      $('login-dialog').close();
      note(`${v.label} is logged in (${stateText(v.state)}).`);
      reload();
    } catch (e) {
      if (!e.silent) $('login-msg').textContent = describe(e);
    }
  }
  /** Closes the login dialog by itself when the farm's own redirect listener finished the login:
   * a login_completed event for the account (done), or an account that needed a login got new tokens. */
  function watchLogin(done) {
    const l = S.login, a = l && S.accounts.find((x) => x.id === l.id);
    if (a && $('login-dialog').open && (done || (l.needed && a.generation !== l.generation && !ATTENTION.includes(a.state)))) {
      $('login-dialog').close();
      note(`${a.label} is logged in.`);
    }
  }

  // ---- dialogs -------------------------------------------------------------

  /** Remembers the focused element, or (if re-rendered meanwhile) its row + action, to focus it again. */
  function focusRestorer(el = document.activeElement) {
    const row = el?.closest?.('tr[data-account-id], tr[data-client-id]');
    const attr = row && (row.dataset.accountId ? 'data-account-id' : 'data-client-id');
    const sel = row && el.dataset.action && `tr[${attr}="${CSS.escape(row.getAttribute(attr))}"] [data-action="${el.dataset.action}"]`;
    return () => (el?.isConnected ? el : sel && document.querySelector(sel))?.focus();
  }
  /** Opens a modal <dialog> (the browser traps focus in it; Esc closes); resolves with its returnValue
   * once closed, focus back on the opener. */
  function openDialog(d, first) {
    const restore = focusRestorer();
    d.returnValue = '';
    d.showModal();
    first?.focus();
    return new Promise((resolve) => d.addEventListener('close', () => (restore(), resolve(d.returnValue)), { once: true }));
  }
  /** Asks a question; resolves with the fields' values ({name: value}) or null when cancelled. */
  async function ask({ title, text, fields = [], ok = 'OK', danger }) {
    $('ask-title').textContent = title;
    $('ask-text').textContent = text;
    $('ask-fields').replaceChildren(...fields.map((f) => {
      const input = f.type === 'textarea' ? h('textarea', { name: f.name, rows: 10, required: true, spellcheck: 'false' })
        : h('input', { name: f.name, type: f.type || 'text', required: true, autocomplete: 'off', step: f.type === 'number' && 1 });
      input.value = f.value ?? '';
      return h('label', {}, f.label, input);
    }));
    Object.assign($('ask-ok'), { textContent: ok, className: danger ? 'danger' : 'primary' });
    const first = $('ask-fields').querySelector('input, textarea') || $('ask-cancel'); // Cancel first for a confirmation
    return (await openDialog($('ask-dialog'), first)) === 'ok' ? Object.fromEntries(new FormData($('ask-form'))) : null;
  }

  // ---- usage ---------------------------------------------------------------

  async function loadUsage(quiet) {
    try {
      [S.usage, S.clients] = await Promise.all([api('GET', '/api/usage'), api('GET', '/api/clients')]);
      renderUsage();
    } catch (e) {
      if (!quiet) showError('Loading usage', e);
    }
  }
  function clientName(id) {
    const c = S.clients.find((x) => x.id === id);
    return id == null ? 'admin token' : c ? c.name + (c.revoked_at ? ' (revoked)' : '') : `client #${id}`;
  }
  function countsTable(table, rows, nameOf, what) {
    const cells = (c) => ['leases', 'ok', 'rate_limited', 'unauthorized', 'error'].map((k) => h('td', { class: 'num', text: c[k] }));
    table.replaceChildren(head(what, 'Window', 'Leases', 'OK', 'Rate limited', 'Unauthorized', 'Error'),
      h('tbody', {}, rows.length ? rows.flatMap((r) => [
        h('tr', {}, h('th', { scope: 'rowgroup', rowspan: 2, text: nameOf(r.id) }), h('td', { text: 'last hour' }), cells(r.last_hour)),
        h('tr', { class: 'sub' }, h('td', { text: 'last day' }), cells(r.last_day)),
      ]) : emptyRow(7, 'No leases in the last day.')));
  }
  function renderUsage() {
    const u = S.usage;
    if (!u) return;
    countsTable($('usage-accounts'), u.per_account, accountName, 'Account');
    countsTable($('usage-clients'), u.per_client, clientName, 'Client key');
    $('usage-recent').replaceChildren(head('Lease', 'Account', 'Client', 'Session', 'Issued', 'Outcome'),
      h('tbody', {}, u.recent.length ? u.recent.map((l) => h('tr', { 'data-lease-id': l.lease_id },
        h('td', {}, h('code', { title: l.lease_id, text: l.lease_id.replace(/^(lease_.{8}).+/, '$1…') })),
        h('td', { text: accountName(l.account_id) }),
        h('td', { text: clientName(l.client_id) }),
        h('td', { text: l.session ?? '—' }),
        h('td', {}, when(l.issued_at)),
        h('td', {}, l.outcome ? h('span', { class: `outcome o-${l.outcome}`, text: l.outcome.replace(/_/g, ' ') })
          : h('span', { class: 'muted', text: l.released_at ? 'released' : 'no report' }))))
        : emptyRow(6, 'No leases yet.')));
  }

  // ---- clients -------------------------------------------------------------

  async function loadClients(quiet) {
    try {
      S.clients = await api('GET', '/api/clients');
    } catch (e) {
      return quiet || showError('Loading client keys', e);
    }
    const restore = $('clients-table').contains(document.activeElement) && focusRestorer();
    $('clients-table').replaceChildren(head('Name', 'Created', 'Status', 'Actions'),
      h('tbody', {}, S.clients.length ? S.clients.map((c) => h('tr', { 'data-client-id': c.id, class: c.revoked_at && 'revoked' },
        h('th', { scope: 'row', id: `client-${c.id}-name`, text: c.name }),
        h('td', {}, when(c.created_at)),
        h('td', {}, c.revoked_at ? ['revoked ', when(c.revoked_at)] : 'active'),
        h('td', {}, !c.revoked_at && h('button', { type: 'button', class: 'danger', 'data-action': 'revoke',
          'aria-describedby': `client-${c.id}-name`, text: 'Revoke' }))))
        : emptyRow(4, 'No client keys yet.')));
    if (restore) restore();
  }
  async function revokeClient(c, b) {
    if (await ask({ title: 'Revoke client key?', danger: true, ok: 'Revoke',
      text: `Revoke the key of ${c.name}? Programs using it are refused from now on; this cannot be undone.` }))
      act(b, `Revoke ${c.name}`, async () => {
        await api('DELETE', `/api/clients/${c.id}`);
        note(`Key of ${c.name} revoked.`);
        await loadClients();
      });
  }
  /** The new key, shown once: it is only in the DOM until "I have saved it" or sign-out. */
  function showKey(r) {
    $('client-key').textContent = r.key;
    $('client-key-name').textContent = r.name;
    $('client-key-box').hidden = false;
    $('client-key-copy').focus();
  }
  function hideKey() {
    $('client-key').textContent = '';
    $('client-key-box').hidden = true;
  }
  async function copyKey() {
    try {
      await navigator.clipboard.writeText($('client-key').textContent); // secure contexts only (https, localhost)
    } catch {
      // Plain-http home server: select the text and try the legacy copy command.
      getSelection().selectAllChildren($('client-key'));
      if (!document.execCommand('copy')) return note('Copy failed: the key is selected, press Ctrl+C.');
    }
    note('Key copied to the clipboard.');
  }

  // ---- webhooks: delivery status, so a failing webhook is visible --------

  async function loadWebhooks() {
    const hooks = await api('GET', '/api/webhooks').catch(() => []);
    $('webhooks').hidden = !hooks.length;
    $('webhooks-table').replaceChildren(head('Target', 'Events', 'Delivered', 'Failed attempts', 'Given up', 'Last success', 'Last error'),
      h('tbody', {}, hooks.map((w) => h('tr', { 'data-webhook': w.index, class: (w.given_up || w.last_error) && 'failing' },
        h('th', { scope: 'row', text: w.target }),
        h('td', { text: w.events?.length ? w.events.join(', ') : 'all' }),
        [w.delivered, w.failed_attempts, w.given_up].map((n) => h('td', { class: 'num', text: n })),
        h('td', {}, ago(w.last_success_at)),
        h('td', {}, w.last_error ? h('span', { class: 'err' }, `${w.last_error} · `, ago(w.last_error_at)) : '—')))));
    tick();
  }

  // ---- backups: what is kept, and one now ---------------------------------

  const fmtBytes = (n) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${Math.ceil(n / 1024)} KiB`);
  async function loadBackups() {
    let found;
    try {
      found = await api('GET', '/api/backups');
    } catch (e) {
      return showError('Loading backups', e);
    }
    $('backups-table').replaceChildren(head('File', 'Size', 'Taken'),
      h('tbody', {}, found.length ? found.map((b) => h('tr', { 'data-backup': b.file },
        h('th', { scope: 'row', text: b.file }),
        h('td', { class: 'num', text: fmtBytes(b.bytes) }),
        h('td', {}, when(b.created_at))))
        : emptyRow(3, 'No backups yet.')));
  }
  // ---- live updates: SSE read with fetch (EventSource cannot send the token) ----

  const HISTORY_PAGE = 1000; // the farm's page size for GET /api/events?since=ID
  const live = { ctrl: null, lastId: null, retry: 1000, backoff: 1000, timer: null, poll: null, pending: null, seen: new Set() };
  function setLive(kind, text) {
    Object.assign($('live-status'), { className: `live ${kind}`, textContent: text });
    $('events-status').textContent = kind === 'off'
      ? 'Live updates unavailable: this farm has no event stream. The accounts table refreshes every 5 s.' : text;
  }
  function stopLive() {
    live.ctrl?.abort();
    clearTimeout(live.timer);
    clearInterval(live.poll);
  }
  async function startLive() {
    stopLive();
    const ctrl = (live.ctrl = new AbortController());
    setLive('wait', 'Connecting…');
    // Seed the list from the stored events (JSON, oldest first, at most HISTORY_PAGE). Only a partial
    // page is the whole history, and the stream then resumes right after it; a full page means a long
    // history, which is skipped (events from now on) rather than replayed. 404/405: no event stream.
    try {
      const res = await fetch('/api/events?since=0', { headers: { ...authHeader(), Accept: 'application/json' }, cache: 'no-store', signal: ctrl.signal });
      if (res.status === 401 || res.status === 403) return refused();
      if ([404, 405, 501].includes(res.status)) return startPolling();
      const list = res.ok && (res.headers.get('content-type') || '').includes('json') ? await res.json() : [];
      if (Array.isArray(list) && list.length && list.length < HISTORY_PAGE) {
        for (const ev of list.slice(-300)) addEvent(ev);
        live.lastId = String(list.at(-1).id);
      }
    } catch {
      if (ctrl.signal.aborted) return;
    }
    stream(ctrl.signal);
  }
  /** Fallback for a farm without /api/events: poll the accounts every 5 s. */
  function startPolling() {
    setLive('off', 'Live updates unavailable');
    clearInterval(live.poll);
    live.poll = setInterval(() => (reload(), S.tab === 'usage' && loadUsage(true)), 5000);
  }
  async function stream(signal) {
    const headers = { ...authHeader(), Accept: 'text/event-stream' };
    if (live.lastId != null) headers['Last-Event-ID'] = live.lastId;
    try {
      const res = await fetch('/api/events', { headers, signal, cache: 'no-store' });
      if (res.status === 401 || res.status === 403) return refused();
      if ([404, 405, 501].includes(res.status) || (res.ok && !(res.headers.get('content-type') || '').includes('text/event-stream'))) {
        res.body?.cancel();
        return startPolling();
      }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      setLive('on', 'Live');
      live.backoff = live.retry;
      reload(); // catch up on whatever changed while disconnected
      await readEvents(res.body, signal);
    } catch {
      // network error or the farm went away: reconnect below
    }
    if (signal.aborted) return;
    const wait = Math.round(live.backoff * (0.8 + Math.random() * 0.4)); // backoff with jitter, up to 30 s
    live.backoff = Math.min(live.backoff * 2, 30000);
    setLive('wait', `Reconnecting in ${Math.ceil(wait / 1000)} s…`);
    live.timer = setTimeout(() => stream(signal), wait);
  }
  /** Parses a text/event-stream body (id, event, data, retry, comments) and dispatches each event. */
  async function readEvents(body, signal) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    signal.addEventListener('abort', () => reader.cancel().catch(() => {}), { once: true });
    let buf = '', data = [], type = '', id = live.lastId;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      const lines = (buf += value).split(/\r\n|\r(?!$)|\n/); // a final \r may be half of \r\n: keep it
      buf = lines.pop();
      for (const line of lines) {
        if (line === '') {
          live.lastId = id; // the resume point advances only with complete events
          if (data.length) onEvent(type || 'message', data.join('\n'));
          data = [];
          type = '';
        } else if (line[0] !== ':') { // ':' starts a comment (keep-alive)
          const i = line.indexOf(':'), field = i < 0 ? line : line.slice(0, i), val = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
          if (field === 'data') data.push(val);
          else if (field === 'event') type = val;
          else if (field === 'id' && !val.includes('\0')) id = val;
          else if (field === 'retry' && /^\d+$/.test(val)) live.retry = Number(val);
        }
      }
    }
  }
  function onEvent(type, data) {
    let ev;
    try {
      ev = JSON.parse(data);
    } catch {
      ev = null;
    }
    if (!ev || typeof ev !== 'object') ev = { detail: data };
    ev.kind ??= type;
    addEvent(ev);
    if (S.login && ev.account_id === S.login.id && ev.kind === 'login_completed') watchLogin(true);
    // Something changed: refresh what is on screen, debounced so a burst costs one fetch.
    clearTimeout(live.pending);
    live.pending = setTimeout(() => {
      reload();
      if (S.tab !== 'accounts') TABS[S.tab]();
    }, 200);
  }
  function addEvent(ev) {
    if (ev.id != null) {
      if (live.seen.has(String(ev.id))) return;
      live.seen.add(String(ev.id));
    }
    const kind = String(ev.kind ?? 'event');
    const tone = /fail|needs|revoked|removed/.test(kind) ? 'bad' : /_ok|succeeded|completed|added|created|ended/.test(kind) ? 'good' : '';
    const list = $('events-list');
    list.prepend(h('li', { 'data-event-id': ev.id, 'data-kind': kind },
      ev.at && when(ev.at),
      h('span', { class: `kind ${tone}`, text: kind.replace(/_/g, ' ') }),
      ev.account_id != null && h('span', { class: 'who', 'data-account-id': ev.account_id, text: accountName(ev.account_id) }),
      h('span', { class: 'detail', text: typeof ev.detail === 'string' ? ev.detail : JSON.stringify(ev.detail ?? '') })));
    while (list.children.length > 300) list.lastElementChild.remove();
    $('events-empty').hidden = true;
  }

  // ---- wiring --------------------------------------------------------------

  const on = (id, type, fn) => $(id).addEventListener(type, fn);
  const onSubmit = (id, fn) => on(id, 'submit', (e) => (e.preventDefault(), fn(e)));
  onSubmit('signin-form', () => {
    const t = $('signin-token').value.trim();
    if (t) signIn(t);
  });
  on('signout-btn', 'click', () => signOut('Signed out.'));
  for (const b of tabButtons()) b.addEventListener('click', () => selectTab(b.dataset.tab));
  on('tabs', 'keydown', (e) => {
    const tabs = tabButtons(), i = tabs.indexOf(document.activeElement);
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
    if (i < 0 || to === undefined) return;
    e.preventDefault();
    selectTab(tabs[(to + tabs.length) % tabs.length].dataset.tab, true);
  });
  on('accounts-body', 'click', (e) => {
    const b = e.target.closest('button[data-action]');
    const a = b && S.accounts.find((x) => String(x.id) === b.closest('tr').dataset.accountId);
    if (a) ACTIONS[b.dataset.action](a, b);
  });
  onSubmit('add-account-form', () => act($('add-account-btn'), 'Add account', async () => {
    const prio = $('add-priority').value.trim();
    const a = await api('POST', '/api/accounts', { provider: $('add-provider').value, label: $('add-label').value.trim(), priority: prio ? Number(prio) : 0 });
    $('add-label').value = '';
    note(`Added ${a.label}; log it in now.`);
    await reload();
    await startLogin(a);
  }));
  onSubmit('login-form', completeLogin);
  on('login-cancel', 'click', () => $('login-dialog').close());
  on('ask-cancel', 'click', () => $('ask-dialog').close(''));
  on('usage-reload', 'click', () => loadUsage());
  onSubmit('client-form', () => act($('client-create-btn'), 'Create client key', async () => {
    const r = await api('POST', '/api/clients', { name: $('client-name').value.trim() });
    $('client-name').value = '';
    showKey(r);
    await loadClients();
  }));
  on('clients-table', 'click', (e) => {
    const b = e.target.closest('button[data-action=revoke]');
    const c = b && S.clients.find((x) => String(x.id) === b.closest('tr').dataset.clientId);
    if (c) revokeClient(c, b);
  });
  on('backup-now-btn', 'click', (e) => act(e.currentTarget, 'Back up', async () => {
    const b = await api('POST', '/api/backups');
    note(`Backup ${b.file} taken.`);
    await loadBackups();
  }));
  on('client-key-copy', 'click', copyKey);
  on('client-key-done', 'click', () => (hideKey(), $('client-name').focus()));

  setInterval(tick, 1000);
  if (token) signIn(token);
  else $('signin-token').focus();
})();
