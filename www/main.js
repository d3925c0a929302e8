// The sinkstar demo: loads a GGUF into a Web Worker (the package's `Sinkstar.inWorker`),
// streams a chat, and draws the sink-window KV cache as it fills and wraps.
//
// Test contract (an end-to-end test in headless Chromium relies on it):
// - document.body.dataset.state: 'loading' | 'ready' | 'replying' | 'error' (load failure);
// - #error (hidden when empty), #progress, #adapter, #speed, #prompt, #send, #stop, #reset,
//   #apply, the settings inputs, canvas#ring and #ring-stats;
// - #messages > .message.user / .message.assistant; an assistant message gets data-stop,
//   data-tokens and data-token-ids (JSON), then data-done="true" when its reply has ended.
// - URL parameters: model, policy, sinks, window, keepSystem, system, temperature, topP,
//   maxTokens (initial settings);
// - window.sinkstarDemo: { modelInfo, lastInfo, bandwidth(), profileDecode(repeat) } (model.info(), and
//   chat.info() after the last reply, reset or new chat; model.bandwidth(); chat.profileDecode(),
//   which ends the chat), for tests that report speeds.

import { RingView } from './ring.js';

const DEFAULT_MODEL = '/models/SmolLM2-135M-Instruct.Q4_1.gguf';
const PACKAGE = '/pkg/src/index.js';

const $ = (id) => document.getElementById(id);
const els = {
  error: $('error'),
  progress: $('progress'),
  progressLabel: $('progress-label'),
  loadRow: $('load-row'),
  modelName: $('model-name'),
  adapter: $('adapter'),
  modelFile: $('model-file'),
  details: $('details'),
  messages: $('messages'),
  emptyHint: $('empty-hint'),
  composer: $('composer'),
  prompt: $('prompt'),
  send: $('send'),
  stop: $('stop'),
  reset: $('reset'),
  speed: $('speed'),
  policy: $('policy'),
  sinks: $('sinks'),
  window: $('window'),
  keepSystem: $('keep-system'),
  system: $('system'),
  temperature: $('temperature'),
  topP: $('top-p'),
  maxTokens: $('max-tokens'),
  apply: $('apply'),
  applyNote: $('apply-note'),
};
const WELCOME = els.emptyHint.textContent;
/** For tests and the console: the latest model.info() and chat.info(), and on request the
 * adapter's bandwidth (model.bandwidth()) and the last decode step's profile
 * (chat.profileDecode(): the chat ends, Apply starts a new one). */
const demo = {
  modelInfo: null,
  lastInfo: null,
  bandwidth: () => model.bandwidth(),
  profileDecode: (/** @type {number} */ repeat) => chat.profileDecode(repeat),
};
window.sinkstarDemo = demo;
const ring = new RingView($('ring'), $('ring-stats'), $('ring-why'));

/** The package module, once imported. */
let sinkstar = null;
/** The loaded model (a worker proxy) and its current chat. */
let model = null;
let chat = null;
/** The reply in progress: its AbortController and a promise that settles when it has ended. */
let reply = null;
/** Bumped by every model load, so that a superseded load's late results are dropped. */
let loadGeneration = 0;
/** The cache settings the current chat was made with (to flag unapplied edits). */
let appliedKey = '';

// ---------------------------------------------------------------------------------------------
// State, errors

function setState(state) {
  document.body.dataset.state = state;
  const live = state === 'ready' || state === 'replying';
  els.send.disabled = state !== 'ready';
  els.stop.disabled = state !== 'replying';
  els.reset.disabled = !live;
  // Apply also mends an error in the chat settings, as long as a model is loaded.
  els.apply.disabled = !(live || (state === 'error' && model));
}

const WEBGPU_HELP =
  'This browser has no WebGPU (navigator.gpu is missing), and sinkstar runs the model on it. '
  + 'Use Chrome or Edge 113 or later (Windows, macOS, ChromeOS; Chrome 121+ on Android), Safari 26, '
  + 'or Firefox 141+ on Windows. On Linux, start Chrome or Chromium with --enable-unsafe-webgpu '
  + '(and --enable-features=Vulkan).';

/** A sentence for the #error box, from a SinkstarError (by its code) or any other error. */
function describeError(e, doing) {
  const message = (e && e.message) || String(e);
  switch (e && e.code) {
    case 'no-webgpu':
      return window.isSecureContext
        ? WEBGPU_HELP
        : `${WEBGPU_HELP} Browsers offer WebGPU only to secure pages: open this one over https or on localhost.`;
    case 'no-adapter':
      return 'This browser has WebGPU but offers no GPU adapter to it. On Linux, Chrome and Chromium '
        + 'need --enable-unsafe-webgpu (and --enable-features=Vulkan); elsewhere use Chrome or Edge 113+ '
        + 'and look at chrome://gpu: the GPU or its driver may be blocklisted.';
    case 'gpu-limit':
      return `This GPU adapter lacks a limit sinkstar needs: ${message}. Try another browser or GPU.`;
    case 'bad-model-file':
      return `The model file is not a GGUF that sinkstar can run: ${message}`;
    case 'fetch':
      return `The download failed: ${message}`;
    case 'context-full':
      return `${message}. Press Reset, or pick the "sink" policy for a chat that never ends.`;
    case 'options':
      return `These settings are not valid: ${message}`;
    case 'sampling':
      return `These sampling settings are not valid: ${message}`;
    default:
      return `${doing}: ${message}`;
  }
}

function showError(text) {
  els.error.textContent = text;
  els.error.hidden = false;
}

function clearError() {
  els.error.textContent = '';
  els.error.hidden = true;
}

// ---------------------------------------------------------------------------------------------
// Settings

/** Fills the settings inputs from the URL (`?temperature=0&maxTokens=8&policy=window`...). */
function settingsFromUrl(params) {
  const set = (input, ...names) => {
    for (const name of names) {
      const value = params.get(name);
      if (value !== null) {
        input.value = value;
        return;
      }
    }
  };
  const policy = params.get('policy');
  if (policy !== null) {
    // An unknown policy still goes through (as an extra option), so its error is shown.
    if (![...els.policy.options].some((o) => o.value === policy)) {
      els.policy.add(new Option(policy, policy));
    }
    els.policy.value = policy;
  }
  set(els.sinks, 'sinks');
  set(els.window, 'window');
  set(els.system, 'system');
  set(els.temperature, 'temperature');
  set(els.topP, 'topP', 'top-p', 'top_p');
  set(els.maxTokens, 'maxTokens', 'max-tokens', 'max_tokens');
  const keep = params.get('keepSystem') ?? params.get('keep-system');
  if (keep !== null) els.keepSystem.checked = keep !== '0' && keep !== 'false';
}

/** A number input's value; an empty or unreadable field gives the fallback. */
function numberOf(input, fallback) {
  const value = input.valueAsNumber;
  return Number.isFinite(value) ? value : fallback;
}

function chatSettings() {
  const system = els.system.value.trim();
  return {
    ...(system ? { system } : {}),
    attention: {
      policy: els.policy.value,
      sinks: numberOf(els.sinks, 4),
      window: numberOf(els.window, 2044),
      keepSystem: els.keepSystem.checked,
    },
    sampling: { temperature: numberOf(els.temperature, 0.7), topP: numberOf(els.topP, 0.95) },
    maxTokens: numberOf(els.maxTokens, 256),
  };
}

function settingsKey() {
  const s = chatSettings();
  return JSON.stringify([s.system ?? '', s.attention]);
}

function markUnapplied() {
  const dirty = chat !== null && settingsKey() !== appliedKey;
  els.apply.classList.toggle('dirty', dirty);
  els.applyNote.textContent = dirty
    ? 'Not applied yet: press Apply to start a new chat with these settings (this one is cleared).'
    : 'Policy, sinks, window and system prompt take effect in a new chat (this one is cleared).';
}

// ---------------------------------------------------------------------------------------------
// Loading

const MB = (bytes) => (bytes / 1e6).toFixed(1);

function showProgress({ phase, loaded = 0, total = null }, fromFile) {
  if (phase === 'gpu') {
    // One step (0, then everything): an indeterminate bar says more than a jump.
    els.progress.removeAttribute('value');
    els.progressLabel.textContent = `Uploading ${total ? `${MB(total)} MB ` : ''}to the GPU…`;
    return;
  }
  const words = {
    download: fromFile ? 'Reading the file' : 'Downloading the model',
    cache: 'Reading the model from the browser cache',
  }[phase] || 'Loading';
  if (total) {
    els.progress.max = total;
    els.progress.value = Math.min(loaded, total);
    els.progressLabel.textContent = `${words}: ${MB(loaded)} / ${MB(total)} MB`;
  } else {
    els.progress.removeAttribute('value'); // indeterminate
    els.progressLabel.textContent = loaded ? `${words}: ${MB(loaded)} MB` : `${words}…`;
  }
}

/**
 * A name for the adapter from the browser's own GPUAdapterInfo, for when the runtime's is
 * empty (Chromium gives wgpu no description: SwiftShader is vendor "google", architecture
 * "swiftshader").
 */
async function browserAdapterName() {
  try {
    const adapter = await navigator.gpu.requestAdapter();
    const i = adapter?.info ?? (await adapter?.requestAdapterInfo?.());
    if (!i) return '';
    const name = i.description || [i.vendor, i.architecture, i.device].filter(Boolean).join(' ');
    const fallback = adapter.isFallbackAdapter ?? i.isFallbackAdapter;
    return name && fallback ? `${name} (software fallback)` : name;
  } catch {
    return '';
  }
}

function showInfo(info, source, adapterName) {
  const a = { ...info.adapter, name: adapterName };
  const m = info.model || {};
  const f16 = info.shaderF16
    ? 'shader-f16: used'
    : `shader-f16: not used (f32 path); the adapter ${a.hasShaderF16 ? 'has it' : 'lacks it'}`;
  els.adapter.textContent = `${a.name || 'unnamed adapter'} · ${a.backend || '?'} · ${f16}`;
  els.adapter.title = `driver: ${a.driver || '?'}`;
  els.modelName.textContent = `${m.name || source} · ${m.weights || '?'}`;

  const rows = [
    ['Model', m.name || '(no name)'],
    ['From', source],
    ['Weights', m.weights],
    ['Layers · dim', `${m.layers} · ${m.dim}`],
    ['Heads · KV heads', `${m.heads} · ${m.kvHeads}`],
    ['Vocabulary', m.vocab?.toLocaleString('en-US')],
    ['Trained context', m.context?.toLocaleString('en-US')],
    ['GPU memory', info.gpuBytes ? `${MB(info.gpuBytes)} MB` : '?'],
    ['Adapter', a.name || '(unnamed)'],
    ['Backend · type', `${a.backend} · ${a.deviceType}`],
    ['Driver', a.driver || '?'],
    ['shader-f16', `${a.hasShaderF16 ? 'available' : 'not available'} on the adapter; `
      + `${info.shaderF16 ? 'used' : 'not used (f32 path)'}`],
    ['Max storage binding', a.maxStorageBufferBindingSize
      ? `${MB(a.maxStorageBufferBindingSize)} MB` : '?'],
  ];
  els.details.replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = v ?? '?';
    return [dt, dd];
  }));
}

async function importPackage() {
  if (sinkstar) return sinkstar;
  try {
    sinkstar = await import(PACKAGE);
  } catch (e) {
    throw Object.assign(new Error(`could not load the sinkstar package from ${PACKAGE} (${e.message})`), {
      code: 'package',
    });
  }
  return sinkstar;
}

/** No WebGPU: said before importing the package, which needs the wasm build to import at all. */
function checkWebGpu() {
  if (!navigator.gpu) throw Object.assign(new Error('navigator.gpu is missing'), { code: 'no-webgpu' });
}

/** Loads a model (a URL or a picked File) in a worker, replacing the current one. */
async function loadModel(source) {
  const generation = ++loadGeneration;
  const label = typeof source === 'string' ? source : `${source.name} (local file)`;
  setState('loading');
  clearError();
  els.loadRow.hidden = false;
  els.progress.removeAttribute('value');
  els.progressLabel.textContent = `Loading ${label}…`;
  await stopReply();
  disposeModel();
  const started = performance.now();
  let from = typeof source === 'string' ? 'the network' : 'a local file';
  try {
    checkWebGpu();
    const { Sinkstar } = await importPackage();
    const loaded = await Sinkstar.inWorker(source, {
      cache: typeof source === 'string',
      onProgress(p) {
        if (generation !== loadGeneration) return;
        if (p.phase === 'cache') from = 'the browser cache';
        showProgress(p, typeof source !== 'string');
      },
    });
    if (generation !== loadGeneration) {
      loaded.dispose();
      return;
    }
    model = loaded;
    demo.modelInfo = await model.info();
    showInfo(demo.modelInfo, label, demo.modelInfo.adapter?.name || (await browserAdapterName()));
    try {
      await newChat();
    } catch (e) {
      // The model is fine, the chat settings are not: they can be fixed and applied.
      if (generation !== loadGeneration) return;
      els.progressLabel.textContent = 'Loaded; no chat yet';
      showError(describeError(e, 'A chat could not be made'));
      setState('error');
      return;
    }
    if (generation !== loadGeneration) return;
    els.progress.max = 1;
    els.progress.value = 1;
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    els.progressLabel.textContent = `Loaded from ${from} in ${secs} s`;
    setState('ready');
    // Not on touch screens, where focus opens the keyboard over the page.
    if (!matchMedia('(pointer: coarse)').matches) els.prompt.focus();
  } catch (e) {
    if (generation !== loadGeneration) return;
    console.error(e);
    disposeModel();
    els.progress.max = 1;
    els.progress.value = 0;
    els.progressLabel.textContent = 'Loading failed';
    els.emptyHint.textContent = 'No model is loaded: see the message above, or load a GGUF file from this computer.';
    showError(describeError(e, `Loading the model from ${label} failed`));
    setState('error');
  }
}

function disposeModel() {
  demo.modelInfo = null;
  demo.lastInfo = null;
  if (chat) chat.dispose();
  chat = null;
  if (model) model.dispose();
  model = null;
  ring.set(null);
}

// ---------------------------------------------------------------------------------------------
// Chat

/** Makes a chat with the current settings; the old one (if any) goes only once this works. */
async function newChat() {
  const settings = chatSettings();
  const fresh = await model.chat(settings);
  const info = await fresh.info();
  if (chat) chat.dispose();
  chat = fresh;
  appliedKey = settingsKey();
  markUnapplied();
  clearMessages();
  els.speed.innerHTML = '&nbsp;';
  demo.lastInfo = info;
  ring.set(info);
}

function clearMessages() {
  els.emptyHint.textContent = WELCOME;
  els.messages.replaceChildren(els.emptyHint);
  els.emptyHint.hidden = false;
}

/** Appends a turn; returns the .message element (its text only) and its meta line. */
function addTurn(role, text) {
  els.emptyHint.hidden = true;
  const turn = document.createElement('div');
  turn.className = `turn ${role}`;
  const message = document.createElement('div');
  message.className = `message ${role}`;
  message.textContent = text;
  const meta = document.createElement('div');
  meta.className = 'meta';
  turn.append(message, meta);
  els.messages.append(turn);
  scrollToEnd(true);
  return { message, meta };
}

function nearEnd() {
  const m = els.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 60;
}

function scrollToEnd(force) {
  if (force || nearEnd()) els.messages.scrollTop = els.messages.scrollHeight;
}

/** Ends the reply in progress, if any, and waits until it has. */
async function stopReply() {
  if (!reply) return;
  reply.controller.abort();
  await reply.done;
}

const STOP_WORDS = { eos: 'end of reply', maxtokens: 'max tokens reached', cancelled: 'stopped' };

async function send() {
  if (document.body.dataset.state !== 'ready' || !chat) return;
  const text = els.prompt.value;
  if (!text.trim()) return;
  els.prompt.value = '';
  clearError();
  const { temperature, topP } = chatSettings().sampling;
  const maxTokens = numberOf(els.maxTokens, 256);
  addTurn('user', text);
  const { message, meta } = addTurn('assistant', '');
  message.classList.add('pending');
  const body = document.createTextNode('');
  message.append(body);

  const controller = new AbortController();
  let ended;
  reply = { controller, done: new Promise((resolve) => { ended = resolve; }) };
  setState('replying');

  const started = performance.now();
  let steps = 0;
  let firstStep = 0;
  els.speed.textContent = 'Reading the prompt…';
  const onStep = (info) => {
    if (info) ring.set(info);
    // One call per token, then one more once the reply has ended (not replying): not a token.
    if (info && !info.replying) return;
    const now = performance.now();
    steps += 1;
    if (steps === 1) firstStep = now;
    const rate = steps > 1 ? ((steps - 1) * 1000) / (now - firstStep) : 0;
    els.speed.textContent = `Replying: ${steps} token${steps === 1 ? '' : 's'}`
      + (steps > 1 ? ` · ${rate.toFixed(1)} tok/s` : ` · prompt read in ${((firstStep - started) / 1000).toFixed(2)} s`);
  };

  try {
    const pieces = chat.send(text, { signal: controller.signal, maxTokens, temperature, topP, onStep });
    for await (const piece of pieces) {
      const follow = nearEnd();
      if (piece) {
        message.classList.remove('pending');
        body.appendData(piece);
      }
      if (follow) scrollToEnd(true);
    }
    const info = await chat.info();
    demo.lastInfo = info;
    ring.set(info);
    const last = info.last;
    if (last) {
      message.dataset.stop = last.stop;
      message.dataset.tokens = String(last.tokens);
      message.dataset.tokenIds = JSON.stringify(last.tokenIds);
      const tps = Number.isFinite(last.decodeTokensPerSec) ? last.decodeTokensPerSec.toFixed(1) : '?';
      els.speed.textContent = `Last reply: ${last.promptTokens} prompt tokens read in `
        + `${last.prefillSecs.toFixed(2)} s · ${last.tokens} tokens at ${tps} tok/s `
        + `(${STOP_WORDS[last.stop] || last.stop})`;
      meta.textContent = `${last.tokens} tokens · ${tps} tok/s · ${STOP_WORDS[last.stop] || last.stop}`;
    }
  } catch (e) {
    console.error(e);
    message.dataset.stop = 'error';
    meta.textContent = 'failed';
    els.speed.textContent = 'The reply failed.';
    showError(describeError(e, 'The reply failed'));
    try {
      ring.set(await chat.info());
    } catch {
      // The chat may be gone with the worker; the error above says why.
    }
  } finally {
    message.classList.remove('pending');
    if (!body.length) message.classList.add('empty');
    message.dataset.done = 'true';
    reply = null;
    if (document.body.dataset.state === 'replying') setState('ready');
    ended();
  }
}

async function resetChat() {
  if (!chat) return;
  setState('loading');
  await stopReply();
  try {
    await chat.reset();
    clearMessages();
    els.speed.innerHTML = '&nbsp;';
    demo.lastInfo = await chat.info();
    ring.set(demo.lastInfo);
  } catch (e) {
    showError(describeError(e, 'Reset failed'));
  }
  setState(chat ? 'ready' : 'error');
}

async function applySettings() {
  if (!model) return;
  setState('loading');
  await stopReply();
  clearError();
  try {
    await newChat();
  } catch (e) {
    console.error(e);
    showError(`${describeError(e, 'A new chat could not be made')} (the previous chat goes on).`);
  }
  setState(chat ? 'ready' : 'error');
}

// ---------------------------------------------------------------------------------------------
// Wiring

els.composer.addEventListener('submit', (event) => {
  event.preventDefault();
  send();
});
els.prompt.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
els.stop.addEventListener('click', () => reply?.controller.abort());
els.reset.addEventListener('click', resetChat);
els.apply.addEventListener('click', applySettings);
for (const input of [els.policy, els.sinks, els.window, els.keepSystem, els.system]) {
  input.addEventListener('input', markUnapplied);
  input.addEventListener('change', markUnapplied);
}
els.modelFile.addEventListener('change', () => {
  const file = els.modelFile.files && els.modelFile.files[0];
  if (file) loadModel(file);
  els.modelFile.value = '';
});

const params = new URLSearchParams(location.search);
settingsFromUrl(params);
setState('loading');
loadModel(new URL(params.get('model') || DEFAULT_MODEL, location.href).href);
