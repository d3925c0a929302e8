// Opens the built test page (main.js) in headless Chromium on WebGPU, waits for window.__result
// and exits 1 on a failure or a timeout, saving a screenshot either way.
// Usage: node drive.mjs URL SCREENSHOT [TIMEOUT_SECS]
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [url, screenshot, timeoutSecs = '600'] = process.argv.slice(2);
const deadline = Date.now() + Number(timeoutSecs) * 1000;
const profile = mkdtempSync(join(tmpdir(), 'sinkstar-chromium-'));

const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  // Playwright's own headless flag is the old mode: ask for the new one (it has WebGPU).
  headless: false,
  args: [
    '--headless=new',
    '--no-sandbox',
    '--enable-unsafe-webgpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--disable-quic',
  ],
  viewport: { width: 1000, height: 900 },
});

let failure = null;
let result = null;
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => console.log(`page ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => console.log(`uncaught in page: ${e.message}`));
  page.on('requestfailed', (r) => console.log(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  await page.goto(url);
  // No WebGPU adapter is a failure, never a skip.
  const adapter = await page.evaluate(async () => {
    const a = await navigator.gpu?.requestAdapter();
    return a ? `${a.info?.vendor} ${a.info?.architecture} ${a.info?.description}`.trim() : null;
  });
  if (!adapter) throw new Error('no WebGPU adapter in this Chromium');
  console.log(`WebGPU adapter: ${adapter}`);
  await page.waitForFunction(() => window.__result, null, { timeout: Math.max(deadline - Date.now(), 1000), polling: 500 });
  result = await page.evaluate(() => window.__result);
  if (!result.ok) failure = result.error;
} catch (e) {
  failure = e.message;
} finally {
  const page = context.pages()[0];
  if (page) await page.screenshot({ path: screenshot, fullPage: true }).catch((e) => console.log(`no screenshot: ${e.message}`));
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

for (const s of result?.steps ?? []) console.log(`  ${s.name.padEnd(26)} ${s.secs.toFixed(1).padStart(6)} s`);
if (failure) {
  console.error(`npm test: FAIL: ${failure} (screenshot: ${screenshot})`);
  process.exit(1);
}
console.log(`npm test: PASS in ${result.secs.toFixed(1)} s (screenshot: ${screenshot})`);
