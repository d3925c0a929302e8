// End-to-end test of the demo page in Debian's headless Chromium (WebGPU on SwiftShader, the
// f32 path), served by `sinkstar serve`:
//   1. without WebGPU the page says so (and which browsers and flags have it);
//   2. the page loads the default model, answers "What is the capital of France?" greedily
//      with exactly the token ids of the native run (`sinkstar generate --json` on Vulkan),
//      and a screenshot is saved;
//   3. the chat goes on until its ring has wrapped: several times around a 40-token window
//      (CI), or with --long past 2048 tokens at the default 4 + 2044 slots (tens of minutes on
//      SwiftShader; the README's record).
// Prints a JSON line with the browser's and the native decode speeds (scripts/browser_speed.py
// reads it). Exits 1 on any failure; a missing WebGPU adapter is a failure, never a skip.
//
// Usage: node tests/browser/e2e.mjs [--long] [--out DIR]   (needs target/debug/sinkstar, pkg/wasm/)

import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const long = process.argv.includes('--long');
const outArg = process.argv.indexOf('--out');
const outDir = outArg > 0 ? process.argv[outArg + 1] : path.join(root, 'target/browser');
mkdirSync(outDir, { recursive: true });
const sinkstar = path.join(root, 'target/debug/sinkstar');
const PROMPT = 'What is the capital of France?';
const MAX_TOKENS = 24;
// SwiftShader runs a 135M model at a few tokens/s: generous, but bounded.
const LOAD_TIMEOUT = 5 * 60_000;
const REPLY_TIMEOUT = (long ? 30 : 10) * 60_000;

function log(message) {
  process.stderr.write(`e2e: ${message}\n`);
}

function fail(message) {
  throw new Error(message);
}

/** Starts `sinkstar serve` on a free port; resolves to its base URL and the process. */
function serve() {
  return new Promise((resolve, reject) => {
    const server = spawn(sinkstar, ['serve', '--port', '0'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    server.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/serving the demo at (http:\/\/[^/\s]+)\//);
      if (m) resolve({ server, base: m[1] });
    });
    server.on('exit', (code) => reject(new Error(`sinkstar serve exited with ${code}`)));
  });
}

/** The native greedy reply to PROMPT through the chat template. */
function nativeReply() {
  const out = execFileSync(
    sinkstar,
    ['generate', '--chat', '--json', '--max-tokens', String(MAX_TOKENS), '-p', PROMPT],
    { env: { ...process.env, WGPU_BACKEND: process.env.WGPU_BACKEND || 'vulkan' }, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  return JSON.parse(out.toString().trim().split('\n').pop());
}

async function launch(webgpu) {
  const userDataDir = mkdtempSync(path.join(tmpdir(), 'sinkstar-chromium-'));
  const args = [
    '--no-sandbox',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--disable-quic',
  ];
  if (webgpu) args.push('--enable-unsafe-webgpu');
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args,
    viewport: { width: 1280, height: 800 },
  });
  // Chromium may still be writing its profile as it exits: remove it after the close, and
  // never fail a test over a leftover temporary folder.
  const close = context.close.bind(context);
  context.close = async () => {
    await close();
    try {
      rmSync(userDataDir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
    } catch (e) {
      log(`left ${userDataDir}: ${e.message}`);
    }
  };
  const page = context.pages()[0] || (await context.newPage());
  page.on('console', (m) => log(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log(`page error: ${e.message}`));
  return { context, page };
}

async function waitState(page, states, timeout) {
  await page.waitForFunction(
    (wanted) => wanted.includes(document.body.dataset.state),
    states,
    { timeout, polling: 250 },
  );
  return page.evaluate(() => document.body.dataset.state);
}

/** Sends `text` and waits for the reply to end; returns the assistant message's data. */
async function send(page, text) {
  const before = await page.locator('.message.assistant').count();
  await page.fill('#prompt', text);
  await page.click('#send');
  const reply = page.locator('.message.assistant').nth(before);
  await reply.waitFor({ state: 'attached', timeout: 30_000 });
  await page.waitForFunction(
    (i) => document.querySelectorAll('.message.assistant')[i]?.dataset.done === 'true',
    before,
    { timeout: REPLY_TIMEOUT, polling: 250 },
  );
  const error = (await page.locator('#error').textContent()).trim();
  if (error) fail(`the reply to ${JSON.stringify(text.slice(0, 40))} failed: ${error}`);
  return reply.evaluate((el) => ({
    text: el.textContent,
    stop: el.dataset.stop,
    tokenIds: JSON.parse(el.dataset.tokenIds || 'null'),
  }));
}

async function noWebgpu(base) {
  const { context, page } = await launch(false);
  try {
    await page.goto(`${base}/`);
    await waitState(page, ['error'], 60_000);
    const error = await page.locator('#error').textContent();
    if (!/WebGPU/.test(error)) fail(`without WebGPU the page says ${JSON.stringify(error)}`);
    log(`no WebGPU: ${error.trim().split('\n')[0]}`);
  } finally {
    await context.close();
  }
}

async function chat(base, native) {
  const { context, page } = await launch(true);
  try {
    const started = Date.now();
    await page.goto(`${base}/?temperature=0&maxTokens=${MAX_TOKENS}`);
    const loaded = await waitState(page, ['ready', 'error'], LOAD_TIMEOUT);
    if (loaded === 'error') fail(`loading failed: ${await page.locator('#error').textContent()}`);
    const adapter = (await page.locator('#adapter').textContent()).trim();
    log(`loaded in ${((Date.now() - started) / 1000).toFixed(1)} s on ${adapter}`);

    const france = await send(page, PROMPT);
    const info = await page.evaluate(() => window.sinkstarDemo.lastInfo);
    await page.screenshot({ path: path.join(outDir, 'demo.png') });
    log(`browser: ${JSON.stringify(france.text)} ${JSON.stringify(france.tokenIds)}`);
    log(`native:  ${JSON.stringify(native.text)} ${JSON.stringify(native.tokenIds)}`);
    if (JSON.stringify(france.tokenIds) !== JSON.stringify(native.tokenIds)) {
      fail('the browser\'s greedy tokens differ from the native run\'s');
    }
    if (!/Paris/.test(france.text)) fail(`no Paris in ${JSON.stringify(france.text)}`);

    // The chat goes on until the ring has wrapped: with --long at the default 4 + 2044 slots
    // past 2048 tokens (long user turns: this repository's README in pieces, short replies);
    // otherwise, to keep CI short on SwiftShader, in a new chat with a 40-token window,
    // wrapped several times (the same kernels and code paths, a smaller ring).
    if (!long) {
      await page.fill('#window', '40');
      await page.click('#apply');
      await waitState(page, ['ready'], 60_000);
    }
    const filler = readFileSync(path.join(root, 'README.md'), 'utf8').replace(/\s+/g, ' ');
    const pieceChars = long ? 1500 : 400;
    let state = await page.evaluate(() => window.sinkstarDemo.lastInfo);
    const turns = [];
    const goal = long ? 2400 : 3 * state.slots;
    for (let turn = 0; state.seen <= goal; turn += 1) {
      const piece = filler.slice(turn * pieceChars, (turn + 1) * pieceChars);
      if (!piece) fail(`README.md ran out before ${goal} tokens`);
      await send(page, `${piece}\n\nSay in five words what this is about.`);
      state = await page.evaluate(() => window.sinkstarDemo.lastInfo);
      turns.push(state.last);
      log(`turn ${turn + 1}: ${(await page.locator('#ring-stats').textContent()).trim()}`);
    }
    if (state.policy !== 'sink' || state.filled > state.slots || state.seen <= state.slots) {
      fail(`the ring did not wrap as expected: ${JSON.stringify(state)}`);
    }
    await page.screenshot({ path: path.join(outDir, 'demo-wrapped.png') });
    // The adapter's streaming bandwidth, for decode's share of it (scripts/browser_speed.py).
    const bandwidth = await page.evaluate(() => window.sinkstarDemo.bandwidth());
    // Where a decoded token's time goes (ends the chat: nothing follows it).
    const profile = await page.evaluate(() => window.sinkstarDemo.profileDecode(3));
    return { adapter, info, turns, bandwidth, profile };
  } finally {
    await context.close();
  }
}

const { server, base } = await serve();
let status = 0;
try {
  log(`serving at ${base}`);
  const native = nativeReply();
  await noWebgpu(base);
  const { adapter, info, turns, bandwidth, profile } = await chat(base, native);
  console.log(JSON.stringify({ adapter, browser: info.last, turns, native, bandwidth, profile }));
  log('passed');
} catch (e) {
  log(`FAILED: ${e.message}`);
  status = 1;
} finally {
  server.kill();
}
process.exit(status);
