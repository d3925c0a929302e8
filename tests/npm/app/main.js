// The page of the npm scratch-project test (tests/npm/run.sh): drives the packed package through
// its public API only and leaves the outcome in window.__result for the Playwright script
// (drive.mjs). ?worker=0 skips the worker half.
import { Sinkstar, SinkstarError } from 'sinkstar';

const MODEL = '/model.gguf';
const QUESTION = 'What is the capital of France?';
const params = new URLSearchParams(location.search);

const logElement = document.getElementById('log');
const statusElement = document.getElementById('status');
const started = performance.now();
/** @param {string} line */
function log(line) {
  const stamped = `[${((performance.now() - started) / 1000).toFixed(1)}s] ${line}`;
  console.log(stamped);
  logElement.textContent += stamped + '\n';
}

/** @type {{ ok: boolean, steps: {name: string, secs: number, detail?: unknown}[], error?: string }} */
const result = { ok: false, steps: [] };

/** Runs one named check; `show` picks what of its value goes into the log and the result. */
async function step(name, body, show = (value) => value) {
  const t = performance.now();
  log(`${name}…`);
  const value = await body();
  const secs = (performance.now() - t) / 1000;
  const detail = show(value);
  result.steps.push({ name, secs, detail });
  log(`${name}: ok in ${secs.toFixed(1)} s ${detail === undefined ? '' : JSON.stringify(detail)}`);
  return value;
}

/** What the log shows of a reply. */
const showReply = ({ text, stats }) => ({ text, tokens: stats.tokens, stop: stats.stop, prefillSecs: stats.prefillSecs, tokensPerSec: stats.decodeTokensPerSec });

function expect(condition, message) {
  if (!condition) throw new Error(`expected ${message}`);
}

/** Awaits `promise` (or calls a function) and checks it fails with a SinkstarError of `code`. */
async function expectError(code, body) {
  try {
    await (typeof body === 'function' ? body() : body);
  } catch (e) {
    expect(e instanceof SinkstarError, `a SinkstarError, got ${e}`);
    expect(e.code === code, `code ${code}, got ${e.code}: ${e.message}`);
    return e.message;
  }
  throw new Error(`expected an error with code ${code}, got none`);
}

/**
 * chat.profileDecode(): rejected before any decode step ('model'), then every part of the last
 * step timed; either way the chat has ended.
 */
async function profiled(model) {
  const fresh = model.chat();
  await expectError('model', fresh.profileDecode(1));
  await expectError('disposed', fresh.info());
  const chat = model.chat({ sampling: { temperature: 0 }, maxTokens: 4 });
  for await (const piece of chat.send(QUESTION)) expect(piece.length > 0, 'non-empty pieces');
  const parts = await chat.profileDecode(1);
  expect(
    parts.length >= 5 && parts.every((p) => typeof p.part === 'string' && p.secs > 0),
    `every part timed: ${JSON.stringify(parts)}`,
  );
  expect(parts.some((p) => p.part.includes('gate/up')), 'the FFN among the parts');
  await expectError('disposed', chat.info());
  return { parts: parts.map((p) => `${p.part}: ${(p.secs * 1e3).toFixed(1)} ms`) };
}

/** Loads with a progress record: the phases seen and the last report of each. */
async function load(how) {
  const phases = {};
  const model = await Sinkstar[how](MODEL, { onProgress: (p) => (phases[p.phase] = p) });
  return { model, phases };
}

/** One greedy reply to the question, checked to name Paris. */
async function greedy(model) {
  const chat = model.chat({ sampling: { temperature: 0 }, maxTokens: 24 });
  let text = '';
  let steps = 0;
  let lastStep;
  for await (const piece of chat.send(QUESTION, { onStep: (info) => ((lastStep = info), steps++) })) {
    expect(typeof piece === 'string' && piece.length > 0, 'non-empty pieces');
    text += piece;
  }
  const info = await chat.info();
  log(`reply: ${JSON.stringify(text)}`);
  expect(/Paris/.test(text), `the reply to mention Paris: ${JSON.stringify(text)}`);
  expect(['eos', 'maxtokens'].includes(info.last.stop), `stop eos or maxtokens, got ${info.last.stop}`);
  expect(info.last.tokens <= 24 && info.last.tokens === info.last.tokenIds.length, 'at most 24 tokens');
  expect(steps >= info.last.tokens && lastStep.last && !lastStep.replying, 'onStep after each token and at the end');
  return { chat, text, stats: info.last };
}

/** A reply aborted after three pieces: the loop ends quietly and the reply is cancelled. */
async function aborted(chat) {
  const controller = new AbortController();
  let pieces = 0;
  for await (const piece of chat.send('Write a long poem about the sea.', { maxTokens: 24, signal: controller.signal })) {
    pieces++;
    if (pieces === 3) controller.abort();
    expect(pieces <= 3, 'no pieces after the abort');
  }
  const info = await chat.info();
  expect(pieces === 3, `3 pieces, got ${pieces}`);
  expect(info.last.stop === 'cancelled', `stop 'cancelled', got ${info.last.stop}`);
  expect(info.last.tokens < 24 && !info.replying, `an early stop, got ${info.last.tokens} tokens`);
  return { pieces, tokens: info.last.tokens };
}

async function main() {
  await step('no-webgpu', async () => {
    // Hide navigator.gpu for a moment: the package must refuse before fetching anything.
    Object.defineProperty(navigator, 'gpu', { value: undefined, configurable: true });
    try {
      await expectError('no-webgpu', Sinkstar.load(MODEL));
      await expectError('no-webgpu', Sinkstar.inWorker(MODEL));
    } finally {
      delete navigator.gpu;
    }
    expect(navigator.gpu, 'navigator.gpu back (this browser has WebGPU)');
  });

  await step('fetch error', async () => {
    const message = await expectError('fetch', Sinkstar.load('/missing.gguf', { cache: false }));
    expect(message.includes('404') && message.includes('/missing.gguf'), `status and URL in "${message}"`);
  });

  await caches.delete('sinkstar-models');
  const { model, phases } = await step('load', () => load('load'), (v) => v.phases);
  expect(phases.download && phases.download.loaded === phases.download.total, 'a whole download');
  expect(phases.gpu && phases.gpu.loaded === phases.gpu.total, 'the gpu phase to finish');
  expect(!phases.cache, 'no cache phase on the first load');

  await step('cached', async () => {
    const cache = await caches.open('sinkstar-models');
    const hit = await cache.match(new URL(MODEL, location.href).href);
    expect(hit, 'the model in the Cache API');
    return { bytes: Number(hit.headers.get('content-length')) };
  });

  const info = await step('model info', () => model.info());
  expect(info.model.layers > 0 && info.model.vocab > 0 && info.gpuBytes > 0, 'a model on the GPU');
  expect(typeof info.adapter.name === 'string', 'an adapter');

  const direct = await step('greedy reply', () => greedy(model), showReply);

  await step('abort', () => aborted(direct.chat));

  await step('model info with its chat', async () => {
    const { chats } = await model.info();
    expect(chats.length === 1 && chats[0].policy === 'sink' && chats[0].seen > 0, 'the chat\'s policy and fill');
    return { chats: chats.length, seen: chats[0].seen };
  });

  await step('option errors', async () => {
    await expectError('options', model.chat({ attention: { policy: 'bogus' } }).info());
    const chat = model.chat();
    await expectError('options', async () => {
      for await (const _ of chat.send('hi', { temperatur: 0 })) break;
    });
    chat.dispose();
  });

  await step('decode profile', () => profiled(model));

  await step('dispose', async () => {
    direct.chat.dispose();
    await expectError('disposed', direct.chat.info());
    model.dispose();
    await expectError('disposed', model.info());
    await expectError('disposed', () => model.chat());
  });

  if (params.get('worker') === '0') return;

  const worker = await step('worker load', () => load('inWorker'), (v) => v.phases);
  expect(worker.phases.cache && !worker.phases.download, 'the worker to read the cached model');
  expect(worker.phases.gpu && worker.phases.gpu.loaded === worker.phases.gpu.total, 'the gpu phase to finish');
  const workerInfo = await step('worker model info', () => worker.model.info());
  expect(workerInfo.model.layers === info.model.layers, 'the same model');
  const bandwidth = await step('worker bandwidth', () => worker.model.bandwidth());
  expect(
    bandwidth.streamBytesPerSec > 0 && bandwidth.dispatchOverheadSecs > 0,
    `a measured bandwidth and dispatch cost: ${JSON.stringify(bandwidth)}`,
  );
  // Every matrix is read once per token (a tied embedding also once more, for its row).
  const ratio = bandwidth.weightBytesPerToken / workerInfo.gpuBytes;
  expect(ratio > 0.9 && ratio < 1.1, `about the model's bytes read per token: ${ratio}`);

  const inWorker = await step(
    'worker greedy reply',
    async () => {
      const reply = await greedy(worker.model);
      expect(reply.text === direct.text, `the same greedy reply as on the page: ${JSON.stringify(reply.text)}`);
      return reply;
    },
    showReply,
  );

  await step('worker abort', () => aborted(inWorker.chat));

  await step('worker decode profile', () => profiled(worker.model));

  await step('worker errors and dispose', async () => {
    await expectError('options', worker.model.chat({ attention: { sinks: 'four' } }).info());
    inWorker.chat.dispose();
    await expectError('disposed', inWorker.chat.info());
    worker.model.dispose();
    await expectError('disposed', worker.model.info());
  });
}

main().then(
  () => {
    result.ok = true;
    statusElement.textContent = 'PASS';
    statusElement.className = 'pass';
  },
  (e) => {
    result.error = `${e?.name}: ${e?.message}${e?.code ? ` (code ${e.code})` : ''}`;
    log(`FAIL: ${result.error}`);
    statusElement.textContent = `FAIL: ${result.error}`;
    statusElement.className = 'fail';
  },
).finally(() => {
  result.secs = (performance.now() - started) / 1000;
  window.__result = result;
});
