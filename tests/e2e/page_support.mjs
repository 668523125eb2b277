// What the admin page scripts (admin_page.mjs, admin_remote.mjs) share:
// the project's pinned playwright-core, headless Chromium with the farm's
// flags, and full-page screenshots recorded in the report.
import { createRequire } from 'node:module';
import { join } from 'node:path';

const require = createRequire(new URL('../../scripts/playwright/package.json', import.meta.url));
const { chromium } = require('playwright-core');

export const launch = (executablePath) => chromium.launch({
  executablePath,
  headless: true,
  timeout: 30000,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});

/** Saves a full-page screenshot `<name>.png` in `dir`, noted in `out.screenshots`. */
export async function shoot(page, dir, out, name) {
  const path = join(dir, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  out.screenshots[name] = path;
}
