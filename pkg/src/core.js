// The model and chat on this thread: a thin layer over the wasm-bindgen classes in ../wasm/
// (src/bindings in the Rust crate). It reads model files (with the Cache API), turns option
// objects into the JSON the bindings take, serializes calls per chat and turns every failure
// into a SinkstarError. The worker (worker.js) runs exactly this code on its own thread.

import init, { Model as RawModel } from '../wasm/sinkstar.js';

/** Name of the Cache API cache that keeps downloaded model files, keyed by absolute URL. */
export const CACHE_NAME = 'sinkstar-models';

/**
 * Every error the package throws or rejects with. `code` says what went wrong: the runtime's
 * own codes ('no-adapter', 'gpu-limit', 'gpu', 'bad-model-file', 'model', 'tokenizer',
 * 'policy', 'context-full', 'sampling', 'input', 'options', 'kernel', 'busy') and the
 * package's: 'no-webgpu' (the browser has no `navigator.gpu`), 'fetch' (the model file could
 * not be downloaded), 'disposed' (the model or chat was disposed), 'worker' (the worker could
 * not start or died) and 'internal' (anything else, e.g. a crash inside the wasm).
 */
export class SinkstarError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {ErrorOptions} [options]
   */
  constructor(code, message, options) {
    super(message, options);
    this.name = 'SinkstarError';
    /** @type {string} */
    this.code = code;
  }
}

/**
 * The SinkstarError for anything caught: the bindings throw plain `Error`s with a `code`.
 * @param {unknown} error
 * @returns {SinkstarError}
 */
export function toError(error) {
  if (error instanceof SinkstarError) return error;
  const e = /** @type {any} */ (error);
  const code = typeof e?.code === 'string' ? e.code : 'internal';
  return new SinkstarError(code, e?.message ?? String(error), { cause: error });
}

/** @param {string} what */
const disposed = (what) => new SinkstarError('disposed', `the ${what} has been disposed`);

/** Fails early, before any download, in a browser without WebGPU. */
export function requireWebGpu() {
  if (!globalThis.navigator?.gpu) {
    throw new SinkstarError(
      'no-webgpu',
      'this browser has no WebGPU (navigator.gpu): use Chrome or Edge 113+, or Chromium with ' +
        '--enable-unsafe-webgpu on Linux, in a secure context (https or localhost)',
    );
  }
}

/** The base that relative model and wasm URLs resolve against: the page, even in a worker. */
export function baseUrl() {
  return globalThis.document?.baseURI ?? globalThis.location?.href;
}

/** @type {Promise<unknown> | undefined} */
let wasmReady;

/**
 * Instantiates the wasm once per realm (page or worker); later calls share the first.
 * @param {string | URL} [wasm] where sinkstar_bg.wasm is; wasm-bindgen's default otherwise
 */
function initWasm(wasm) {
  wasmReady ??= init({ module_or_path: wasm }).catch((e) => {
    wasmReady = undefined; // let a later load try again
    throw new SinkstarError('fetch', `could not load the runtime's wasm (${wasm ?? 'sinkstar_bg.wasm'}): ${e?.message ?? e}`, { cause: e });
  });
  return wasmReady;
}

/**
 * @typedef {{ phase: 'download' | 'cache' | 'gpu', loaded: number, total: number | null }} Progress
 * @typedef {{ onProgress?: (progress: Progress) => void, cache?: boolean, wasm?: string | URL }} LoadOptions
 */

/**
 * Reads a body to one Uint8Array, reporting progress. Allocates once when the length is
 * known (models are large: no second copy), and copes with a length that turns out wrong.
 * @param {Response} response
 * @param {Progress['phase']} phase
 * @param {LoadOptions['onProgress']} onProgress
 * @returns {Promise<Uint8Array>}
 */
export async function readResponse(response, phase, onProgress) {
  const length = Number(response.headers.get('content-length'));
  let total = length > 0 ? length : null;
  let buffer = total ? new Uint8Array(total) : null;
  /** @type {Uint8Array[]} */
  const chunks = [];
  let loaded = 0;
  onProgress?.({ phase, loaded, total });
  if (!response.body) return new Uint8Array(await response.arrayBuffer());
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (buffer && loaded + value.length <= buffer.length) {
      buffer.set(value, loaded);
    } else {
      // More bytes than announced (a compressed transfer): collect chunks instead.
      if (buffer) chunks.push(buffer.subarray(0, loaded));
      buffer = null;
      total = null;
      chunks.push(value);
    }
    loaded += value.length;
    onProgress?.({ phase, loaded, total });
  }
  if (buffer) return loaded === buffer.length ? buffer : buffer.slice(0, loaded);
  const bytes = new Uint8Array(loaded);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return bytes;
}

/**
 * The model file's bytes, and the cache key to store them under once they have loaded.
 * @param {string | URL | Response | Blob | ArrayBuffer | ArrayBufferView} source
 * @param {boolean} useCache
 * @param {LoadOptions['onProgress']} onProgress
 * @returns {Promise<{ bytes: Uint8Array, cacheKey?: string }>}
 */
async function readSource(source, useCache, onProgress) {
  if (source instanceof ArrayBuffer) return { bytes: new Uint8Array(source) };
  if (ArrayBuffer.isView(source)) {
    return { bytes: new Uint8Array(source.buffer, source.byteOffset, source.byteLength) };
  }
  if (source instanceof Response) return { bytes: await readBody(source, '(response)', onProgress) };
  if (typeof Blob !== 'undefined' && source instanceof Blob) {
    return { bytes: await readResponse(new Response(source), 'download', onProgress) };
  }
  if (typeof source !== 'string' && !(source instanceof URL)) {
    throw new SinkstarError('input', 'the model source must be a URL, Response, Blob or bytes');
  }
  const url = new URL(source, baseUrl()).href;
  // The Cache API exists only in secure contexts (and may refuse, e.g. in private windows):
  // without it every load downloads.
  let cache = null;
  if (useCache && globalThis.caches) {
    try {
      cache = await caches.open(CACHE_NAME);
      const cached = await cache.match(url);
      if (cached) return { bytes: await readResponse(cached, 'cache', onProgress) };
    } catch {
      cache = null;
    }
  }
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new SinkstarError('fetch', `could not fetch ${url}: ${/** @type {Error} */ (e).message}`, { cause: e });
  }
  return { bytes: await readBody(response, url, onProgress), cacheKey: cache ? url : undefined };
}

/**
 * @param {Response} response
 * @param {string} url for the error message
 * @param {LoadOptions['onProgress']} onProgress
 */
async function readBody(response, url, onProgress) {
  if (!response.ok) {
    throw new SinkstarError('fetch', `HTTP ${response.status} ${response.statusText} for ${response.url || url}`);
  }
  return readResponse(response, 'download', onProgress);
}

/**
 * Loads a model on this thread (what `Sinkstar.load` does).
 * @param {string | URL | Response | Blob | ArrayBuffer | ArrayBufferView} source
 * @param {LoadOptions} [options]
 * @returns {Promise<Model>}
 */
export async function loadModel(source, { onProgress, cache = true, wasm } = {}) {
  requireWebGpu();
  // No adapter is worth knowing before a download of hundreds of megabytes.
  if (!(await navigator.gpu.requestAdapter())) {
    throw new SinkstarError('no-adapter', 'WebGPU is there but the browser offers no adapter (GPU blocklisted or disabled?)');
  }
  const [{ bytes, cacheKey }] = await Promise.all([readSource(source, cache, onProgress), initWasm(wasm)]);
  const total = bytes.byteLength;
  onProgress?.({ phase: 'gpu', loaded: 0, total });
  let raw;
  try {
    raw = await RawModel.load(bytes);
  } catch (e) {
    throw toError(e);
  }
  onProgress?.({ phase: 'gpu', loaded: total, total });
  // Cached only once it has loaded, so a broken download is never served again.
  if (cacheKey) {
    try {
      const headers = { 'content-type': 'application/octet-stream', 'content-length': String(total) };
      await (await caches.open(CACHE_NAME)).put(cacheKey, new Response(bytes, { headers }));
    } catch {
      // Caching is an optimisation: a full quota must not fail the load.
    }
  }
  return new Model(raw);
}

/** A model on the GPU of this thread. Create it with `Sinkstar.load`. */
export class Model {
  /** @type {RawModel | null} */
  #raw;
  /** @type {Set<Chat>} */
  #chats = new Set();

  /** @param {RawModel} raw */
  constructor(raw) {
    this.#raw = raw;
  }

  #live() {
    if (!this.#raw) throw disposed('model');
    return this.#raw;
  }

  /**
   * The adapter and its features, the model's shape, the GPU memory in use, and each open
   * chat's policy and cache fill (its `chat.info()`, after any step it is running).
   * @returns {Promise<object>}
   */
  async info() {
    const info = JSON.parse(this.#live().info());
    // A chat whose options were refused holds no cache: it is left out, not an error here.
    const chats = await Promise.allSettled([...this.#chats].map((chat) => chat.info()));
    info.chats = chats.filter((c) => c.status === 'fulfilled').map((c) => c.value);
    return info;
  }

  /**
   * The adapter's streaming read bandwidth, the cost of a dispatch and the weight bytes a
   * decoded token reads (a few seconds of GPU work): with a chat's decode rate, how close
   * decoding comes to what the adapter can stream.
   * @returns {Promise<object>}
   */
  async bandwidth() {
    return JSON.parse(await this.#live().bandwidth());
  }

  /**
   * A new conversation with its own KV cache. Bad options surface on the chat's first await.
   * @param {object} [options]
   * @returns {Chat}
   */
  chat(options) {
    const chat = new Chat(this.#live(), options ?? {}, () => this.#chats.delete(chat));
    this.#chats.add(chat);
    return chat;
  }

  /** Frees the model and its chats' GPU memory; later calls throw a 'disposed' error. */
  dispose() {
    for (const chat of this.#chats) chat.dispose();
    this.#raw?.free();
    this.#raw = null;
  }
}

/**
 * Drops undefined values so that `{ temperature: undefined }` does not hide a chat default.
 * @param {object} object
 */
const defined = (object) => Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined));

/** One conversation on a model. Create it with `model.chat()`. */
export class Chat {
  /** @type {import('../wasm/sinkstar.js').Chat | undefined} */
  #raw;
  /** @type {SinkstarError | undefined} why the chat could not be created */
  #error;
  /** Reply options every send starts from (the chat's `sampling` and `maxTokens`). */
  #defaults;
  /** Every call waits for the one before: the bindings refuse calls during a step ('busy'). */
  #tail = Promise.resolve();
  /** Counts sends, so that a send replaced by a newer one stops pulling tokens. */
  #sends = 0;
  #disposed = false;
  #onDispose;

  /**
   * @param {RawModel} model
   * @param {{ sampling?: object, maxTokens?: number }} options
   * @param {() => void} onDispose
   */
  constructor(model, options, onDispose) {
    const { sampling, maxTokens, ...settings } = options;
    this.#defaults = defined({ ...sampling, maxTokens });
    this.#onDispose = onDispose;
    try {
      this.#raw = model.chat(JSON.stringify(settings));
    } catch (e) {
      this.#error = toError(e);
    }
  }

  /**
   * Runs `step` on the raw chat after every call queued before it.
   * @template T
   * @param {(raw: import('../wasm/sinkstar.js').Chat) => T | Promise<T>} step
   * @returns {Promise<T>}
   */
  #run(step) {
    const result = this.#tail
      .then(() => {
        if (this.#disposed) throw disposed('chat');
        if (this.#error) throw this.#error;
        return step(/** @type {import('../wasm/sinkstar.js').Chat} */ (this.#raw));
      })
      .catch((e) => {
        throw toError(e);
      });
    // The next call waits for this one, whatever its outcome.
    this.#tail = result.then(
      () => {},
      () => {},
    );
    return result;
  }

  /**
   * Adds a user turn and streams the reply as non-empty pieces of text.
   * @param {string} text
   * @param {{ signal?: AbortSignal, onStep?: (info: object) => void, [option: string]: unknown }} [options]
   * @returns {AsyncGenerator<string, void, undefined>}
   */
  async *send(text, options = {}) {
    const { signal, onStep, ...reply } = options;
    if (signal?.aborted) return;
    const id = ++this.#sends;
    const settings = JSON.stringify({ ...this.#defaults, ...defined(reply) });
    const state = (/** @type {import('../wasm/sinkstar.js').Chat} */ raw) => (onStep ? JSON.parse(raw.state()) : null);
    await this.#run((raw) => raw.begin(String(text), settings));
    let running = true;
    try {
      // A later send() (or reset) takes the chat over: this one stops pulling tokens.
      while (!signal?.aborted && id === this.#sends) {
        // One queued job for the token and its state, so nothing slips in between.
        const [piece, info] = await this.#run(async (raw) => [await raw.next(), state(raw)]);
        if (piece === undefined) running = false;
        onStep?.(info);
        if (!running) return;
        if (piece) yield piece;
      }
    } catch (e) {
      running = false; // the bindings end a reply that failed
      throw e;
    } finally {
      // Aborted, or the loop was left early: end the reply, keeping what it said.
      if (running && id === this.#sends && !this.#disposed) {
        const info = await this.#run((raw) => {
          raw.cancel();
          return state(raw);
        });
        onStep?.(info);
      }
    }
  }

  /**
   * The KV cache and the last reply's statistics.
   * @returns {Promise<object>}
   */
  info() {
    return this.#run((raw) => JSON.parse(raw.state()));
  }

  /**
   * Forgets the conversation but the system message; a running reply ends.
   * @returns {Promise<void>}
   */
  reset() {
    this.#sends++;
    return this.#run((raw) => raw.reset());
  }

  /**
   * Times each part of the last decode step on the GPU (every layer's dispatches of that part
   * alone, `repeat` runs, median seconds), as `sinkstar bench` does natively. The re-runs
   * overwrite the KV cache, so this ends the chat: later calls fail 'disposed'.
   * @param {number} [repeat]
   * @returns {Promise<{ part: string, secs: number }[]>}
   */
  async profileDecode(repeat = 3) {
    try {
      const profile = await this.#run((raw) => {
        // The bindings take the chat over (and free it), whatever the outcome.
        this.#raw = undefined;
        return raw.profileDecode(repeat);
      });
      return JSON.parse(profile);
    } finally {
      this.dispose();
    }
  }

  /** Frees the chat's KV cache once the running step is done; later calls fail 'disposed'. */
  dispose() {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#onDispose();
    const raw = this.#raw;
    this.#tail.then(() => raw?.free());
  }
}
