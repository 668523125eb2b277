// The admin page's remote browser at phone width (390×844, touch), for
// tests/e2e/admin_page.rs: opens /admin/#record=ID, signs in, and records
// the account's login in the farm's own browser with taps on the live view
// and key presses only; saves the proposed script and waits for the farm's
// proof. Reports what the page showed as one JSON object on stdout; exit
// status 1 (with "error" and a failure.png) when a step timed out.
//
// Environment: CHROMIUM, FARM_URL, ADMIN_TOKEN, ACCOUNT_ID, USER (the
// provider's user: its password is USER-password), ARTIFACTS,
// STEP_TIMEOUT_MS.
import { join } from 'node:path';
import { launch, shoot as shootIn } from './page_support.mjs';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const [chromiumPath, farm, token, id, user, artifacts] =
  ['CHROMIUM', 'FARM_URL', 'ADMIN_TOKEN', 'ACCOUNT_ID', 'USER', 'ARTIFACTS'].map(env);
const stepTimeout = Number(process.env.STEP_TIMEOUT_MS || 15000);
const out = { console: [], screenshots: {} };
let step = 'launch';

const shoot = (page, name) => shootIn(page, artifacts, out, name);

const browser = await launch(chromiumPath);
let page;
try {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, hasTouch: true });
  page = await context.newPage();
  page.setDefaultTimeout(stepTimeout);
  page.on('console', (m) => m.type() === 'error' && out.console.push(`console: ${m.text()}`));
  page.on('pageerror', (e) => out.console.push(`pageerror: ${e.message}`));

  step = 'open the record link and sign in';
  await page.goto(`${farm}/admin/#record=${id}`);
  await page.fill('#signin-token', token);
  await page.click('#signin-btn');

  step = 'the live view shows the login form';
  await page.waitForSelector('#remote-dialog[open]');
  await page.waitForFunction(() => document.querySelector('#remote-url').textContent.includes('/interaction/'));
  // A frame was drawn: the canvas is not blank white.
  await page.waitForFunction(() => {
    const c = document.querySelector('#remote-canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < d.length; i += 4) if (d[i] < 200) return true;
    return false;
  });
  out.canvas = await page.$eval('#remote-canvas', (c) => ({ width: c.width, height: c.height }));
  out.scroll_width = await page.evaluate(() => document.documentElement.scrollWidth);
  await shoot(page, 'remote-phone-login');

  step = 'tap the page, then type the user name and password';
  const box = await page.locator('#remote-canvas').boundingBox();
  await page.touchscreen.tap(box.x + 3, box.y + 3);
  await page.locator('#remote-canvas').focus();
  await page.keyboard.press('Tab');
  await page.keyboard.type(user);
  await page.keyboard.press('Tab');
  await page.keyboard.type(`${user}-password`);
  await page.keyboard.press('Enter');

  step = 'allow on the consent page until the script is proposed';
  for (let i = 0; i < 8; i++) {
    const proposed = await page.waitForSelector('#remote-script:not([hidden])', { timeout: 2500 }).catch(() => null);
    if (proposed) break;
    await page.locator('#remote-canvas').focus();
    await page.keyboard.press('Enter');
  }
  await page.waitForSelector('#remote-script:not([hidden])');
  out.script = await page.$eval('#remote-script', (t) => t.value);
  out.done_state = await page.$eval('#remote-state', (s) => s.textContent);
  await shoot(page, 'remote-phone-recorded');

  step = 'save the script and wait for its proof';
  await page.click('#remote-save');
  await page.waitForFunction(() => /Proved|proof failed/.test(document.querySelector('#remote-state').textContent), null,
    { timeout: 60000 });
  out.proof_state = await page.$eval('#remote-state', (s) => s.textContent);
  await shoot(page, 'remote-phone-proved');
} catch (e) {
  out.error = `${step}: ${e.message}`;
  await page?.screenshot({ path: join(artifacts, 'failure.png'), fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
process.stdout.write(`${JSON.stringify(out)}\n`);
