// Drives the farm's admin page (/admin) in headless Chromium through the
// project's pinned playwright-core (scripts/playwright), for
// tests/e2e/admin_page.rs. That test owns the farm and judges the result;
// this script only acts like a person in the browser and reports what the
// page showed, as one JSON object on stdout. Exit status 1 (with "error" in
// the JSON and a failure.png) when a step timed out.
//
// Environment:
//   CHROMIUM       the browser executable (/usr/bin/chromium)
//   FARM_URL       http://127.0.0.1:<port>
//   ADMIN_TOKEN    the farm's admin token
//   REFRESH_ID     account to click "Refresh now" on
//   DISABLE_ID     account this script disables behind the page's back (the
//                  page must learn it through the event stream)
//   CLIENT_NAME    name of the client key to create in the Clients tab
//   ARTIFACTS      directory for the screenshots
//   STEP_TIMEOUT_MS  how long one step may wait
// The farm is expected to have one webhook that fails (the Events tab must
// show it failing).
import { join } from 'node:path';
import { launch, shoot as shootIn } from './page_support.mjs';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const [chromiumPath, farm, token, refreshId, disableId, clientName, artifacts] =
  ['CHROMIUM', 'FARM_URL', 'ADMIN_TOKEN', 'REFRESH_ID', 'DISABLE_ID', 'CLIENT_NAME', 'ARTIFACTS'].map(env);
const stepTimeout = Number(process.env.STEP_TIMEOUT_MS || 10000);

const out = { console: { refused: [], normal: [] }, documents: 0, screenshots: {} };
let phase = 'refused';
let step = 'launch';

const row = (id) => `#accounts-body tr[data-account-id="${id}"]`;
const refreshOkIds = (page) =>
  page.$$eval('#events-list li[data-kind="refresh_ok"]', (lis) => lis.map((li) => li.dataset.eventId));

/** The same request the farm's other clients send, outside the page. */
async function farmApi(method, path, body) {
  const res = await fetch(farm + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body && JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

const shoot = (page, name) => shootIn(page, artifacts, out, name);

const browser = await launch(chromiumPath);
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(stepTimeout);
  page.on('console', (m) => m.type() === 'error' && out.console[phase].push(`console: ${m.text()}`));
  page.on('pageerror', (e) => out.console[phase].push(`pageerror: ${e.message}`));
  page.on('domcontentloaded', () => out.documents++);

  step = 'open the page';
  await page.goto(`${farm}/admin/`);
  await page.evaluate(() => (window.__e2eMarker = 'same document'));

  step = 'sign in with a wrong token';
  await page.fill('#signin-token', `${token}-wrong`);
  await page.click('#signin-btn');
  await page.waitForFunction(() => document.querySelector('#signin-msg').textContent.trim() !== '');
  out.refused = await page.evaluate(() => ({
    message: document.querySelector('#signin-msg').textContent.trim(),
    tabs_hidden: document.querySelector('#tabs').hidden,
    stored: Object.keys(sessionStorage).length,
  }));

  phase = 'normal';
  step = 'sign in';
  await page.fill('#signin-token', token);
  await page.click('#signin-btn');
  await page.waitForSelector('#live-status.on');
  await page.waitForSelector(`${row(refreshId)} .badge[data-state]`);
  await page.waitForSelector(`${row(disableId)} .badge[data-state]`);
  out.signed_in = await page.evaluate((t) => ({
    url: location.href,
    token_in_url: location.href.includes(t),
    token_in_session_storage: Object.values(sessionStorage).includes(t),
    signin_hidden: document.querySelector('#signin').hidden,
  }), token);
  out.accounts = await page.$$eval('#accounts-body tr[data-account-id]', (rows) => rows.map((r) => ({
    id: Number(r.dataset.accountId),
    label: r.querySelector('th').textContent,
    state: r.querySelector('.badge[data-state]').dataset.state,
  })));

  step = 'the quota column';
  await page.waitForSelector('#accounts-body .quota[data-window]');
  await page.waitForSelector('#accounts-body .quota-usage');
  await page.click('#accounts-body .quota-usage summary');
  out.quota = await page.$$eval('#accounts-body tr[data-account-id]', (rows) => rows.map((r) => ({
    id: Number(r.dataset.accountId),
    windows: [...r.querySelectorAll('.quota[data-window]')].map((q) => ({
      name: q.dataset.window,
      used: q.dataset.used,
      text: q.querySelector('.qused').textContent,
      reset: q.querySelector('time[data-until]')?.textContent ?? '',
    })),
    usage: r.querySelector('.quota-usage[open] pre')?.textContent ?? null,
  })));

  step = 'refresh now';
  const expiresSel = `${row(refreshId)} time[data-until]`;
  const before = { expires_at: await page.getAttribute(expiresSel, 'data-until'), events: await refreshOkIds(page) };
  await page.click(`${row(refreshId)} [data-action="refresh"]`);
  const event = await page.waitForFunction(([seen, id]) => {
    const li = [...document.querySelectorAll('#events-list li[data-kind="refresh_ok"]')].find((l) => !seen.includes(l.dataset.eventId));
    return li && li.querySelector('.who')?.dataset.accountId === id && li.dataset.eventId;
  }, [before.events, refreshId]);
  await page.waitForFunction(([sel, old]) => document.querySelector(sel)?.dataset.until !== old, [expiresSel, before.expires_at]);
  out.refresh = {
    event_id: Number(await event.jsonValue()),
    expires_before: before.expires_at,
    expires_after: await page.getAttribute(expiresSel, 'data-until'),
    state: await page.getAttribute(`${row(refreshId)} .badge`, 'data-state'),
  };

  step = 'a change made elsewhere shows without reload';
  await farmApi('PATCH', `/api/accounts/${disableId}`, { enabled: false });
  await page.waitForSelector(`${row(disableId)} .badge[data-state="disabled"]`);
  out.live_disable = { state: 'disabled' };

  step = 'create a client key';
  await page.click('#tab-clients');
  await page.fill('#client-name', clientName);
  await page.click('#client-create-btn');
  await page.waitForFunction(() => document.querySelector('#client-key').textContent.trim() !== '');
  await page.waitForSelector('#clients-table tbody tr[data-client-id]');
  out.client = {
    key: (await page.textContent('#client-key')).trim(),
    listed: await page.$$eval('#clients-table tbody tr[data-client-id] th', (ths) => ths.map((th) => th.textContent)),
    key_box_visible: await page.isVisible('#client-key-box'),
  };

  step = 'screenshots';
  const ready = {
    accounts: `${row(refreshId)} .badge`,
    usage: '#usage-recent tbody tr[data-lease-id]',
    clients: '#clients-table tbody tr[data-client-id]',
    events: '#events-list li[data-event-id]',
  };
  for (const [tab, selector] of Object.entries(ready)) {
    step = `screenshot of ${tab}`;
    await page.click(`#tab-${tab}`);
    await page.waitForSelector(`#panel-${tab}:not([hidden]) ${selector}`);
    if (tab === 'events') {
      // The farm's webhook fails (see admin_page.rs): the tab says so.
      await page.waitForSelector('#webhooks-table tr[data-webhook].failing');
      out.webhooks = await page.$$eval('#webhooks-table tbody tr[data-webhook]', (rows) => rows.map((r) => ({
        failing: r.classList.contains('failing'),
        given_up: r.querySelectorAll('td.num')[2]?.textContent,
        last_error: r.querySelector('.err')?.textContent ?? '',
      })));
      step = 'back up now';
      await page.waitForSelector('#backups-table tbody td.empty');
      await page.click('#backup-now-btn');
      await page.waitForSelector('#backups-table tbody tr[data-backup]');
      out.backups = await page.$$eval('#backups-table tbody tr[data-backup]', (rows) => rows.map((r) => r.dataset.backup));
    }
    await shoot(page, tab);
  }
  step = 'phone-width screenshot of accounts';
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click('#tab-accounts');
  await page.waitForSelector(`#panel-accounts:not([hidden]) ${ready.accounts}`);
  out.phone = await page.evaluate(() => ({ scroll_width: document.documentElement.scrollWidth, inner_width: innerWidth }));
  await shoot(page, 'accounts-phone');

  step = 'the end';
  out.alerts = await page.$$eval('#alerts .alert', (as) => as.map((a) => a.textContent));
  out.marker = await page.evaluate(() => window.__e2eMarker ?? null);
  out.live_status_on = await page.isVisible('#live-status.on');
} catch (e) {
  out.error = `${step}: ${e.message}`;
  await page?.screenshot({ path: join(artifacts, 'failure.png'), fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
process.stdout.write(`${JSON.stringify(out)}\n`);
