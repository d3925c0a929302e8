// The page's side of `Sinkstar.inWorker`: objects with the same methods as core.js's Model and
// Chat that forward every call to worker.js by postMessage.

import { SinkstarError, requireWebGpu, baseUrl, readResponse } from './core.js';

/** The worker and the requests waiting for its answers. */
class Link {
  #worker;
  /** @type {Map<number, (message: any) => void>} */
  #pending = new Map();
  #ids = 0;
  /** @type {SinkstarError | null} set once the worker is gone: every later call fails with it */
  closed = null;

  /** @param {Worker} worker */
  constructor(worker) {
    this.#worker = worker;
    worker.onmessage = ({ data }) => this.#pending.get(data.id)?.(data);
    // Only a worker that failed to start or crashed outside a request ends up here.
    worker.onerror = (event) => {
      event.preventDefault();
      this.close(new SinkstarError('worker', `the sinkstar worker failed: ${event.message || 'could not start it'}`));
    };
    worker.onmessageerror = () => this.close(new SinkstarError('worker', 'a message from the sinkstar worker could not be read'));
  }

  /**
   * Sends a request; `onEvent` gets its events, the promise its answer.
   * @param {object} message
   * @param {(event: any) => void} [onEvent]
   * @param {Transferable[]} [transfer]
   * @returns {{ id: number, done: Promise<any> }}
   */
  request(message, onEvent, transfer = []) {
    const id = ++this.#ids;
    const done = new Promise((resolve, reject) => {
      if (this.closed) return reject(this.closed);
      this.#pending.set(id, (m) => {
        if (m.type === 'done') resolve(m.value);
        else if (m.type === 'error') reject(new SinkstarError(m.error.code, m.error.message));
        else return onEvent?.(m);
        this.#pending.delete(id);
      });
      this.#worker.postMessage({ ...message, id }, transfer);
    });
    return { id, done };
  }

  /** @param {object} message a message that gets no answer */
  post(message) {
    if (!this.closed) this.#worker.postMessage(message);
  }

  /** @param {SinkstarError} error what pending and later calls fail with */
  close(error) {
    if (this.closed) return;
    this.closed = error;
    this.#worker.terminate();
    for (const settle of this.#pending.values()) settle({ type: 'error', error });
    this.#pending.clear();
  }
}

/**
 * Loads a model in a dedicated worker (what `Sinkstar.inWorker` does).
 * @param {string | URL | Response | Blob | ArrayBuffer | ArrayBufferView} source
 * @param {import('./core.js').LoadOptions} [options]
 * @returns {Promise<WorkerModel>}
 */
export async function loadInWorker(source, { onProgress, cache = true, wasm } = {}) {
  requireWebGpu();
  /** @type {Transferable[]} */
  let transfer = [];
  // The worker's own URL is not the page's: resolve relative URLs here.
  if (typeof source === 'string' || source instanceof URL) source = new URL(source, baseUrl()).href;
  // A Response cannot cross to the worker: read it here.
  if (source instanceof Response) {
    if (!source.ok) throw new SinkstarError('fetch', `HTTP ${source.status} ${source.statusText} for ${source.url || '(response)'}`);
    source = await readResponse(source, 'download', onProgress);
  }
  if (ArrayBuffer.isView(source)) {
    const whole = source.byteOffset === 0 && source.byteLength === source.buffer.byteLength && source.buffer instanceof ArrayBuffer;
    // Bytes move to the worker instead of being copied (the caller's buffer is detached).
    source = whole ? source.buffer : new Uint8Array(source.buffer, source.byteOffset, source.byteLength).slice().buffer;
  }
  if (source instanceof ArrayBuffer) transfer = [source];
  const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  const link = new Link(worker);
  const options = { cache, wasm: wasm === undefined ? undefined : new URL(wasm, baseUrl()).href };
  try {
    await link.request({ type: 'load', source, options }, (e) => onProgress?.(e.progress), transfer).done;
  } catch (e) {
    link.close(/** @type {SinkstarError} */ (e));
    throw e;
  }
  return new WorkerModel(link);
}

/** @param {string} what */
const disposed = (what) => new SinkstarError('disposed', `the ${what} has been disposed`);

/** A model running in a worker; the same methods as a model on the page. */
export class WorkerModel {
  #link;
  #chats = 0;

  /** @param {Link} link */
  constructor(link) {
    this.#link = link;
  }

  /**
   * The adapter, the model's shape and the GPU memory in use.
   * @returns {Promise<object>}
   */
  info() {
    return this.#link.request({ type: 'info' }).done;
  }

  /**
   * The adapter's streaming bandwidth, the cost of a dispatch and the weight bytes per token.
   * @returns {Promise<object>}
   */
  bandwidth() {
    return this.#link.request({ type: 'bandwidth' }).done;
  }

  /**
   * A new conversation, created in the worker; bad options surface on the chat's first await.
   * @param {object} [options]
   * @returns {WorkerChat}
   */
  chat(options) {
    if (this.#link.closed) throw this.#link.closed;
    const id = ++this.#chats;
    // JSON, as the bindings take it: a stray function would make postMessage throw here.
    this.#link.post({ type: 'chat', chat: id, options: JSON.parse(JSON.stringify(options ?? {})) });
    return new WorkerChat(this.#link, id);
  }

  /** Ends the worker, which frees all its GPU memory; later calls fail 'disposed'. */
  dispose() {
    this.#link.close(disposed('model'));
  }
}

/** A conversation in the worker; the same methods as a chat on the page. */
export class WorkerChat {
  #link;
  #id;
  #disposed = false;

  /** @param {Link} link @param {number} id */
  constructor(link, id) {
    this.#link = link;
    this.#id = id;
  }

  /**
   * @param {object} message
   * @param {(event: any) => void} [onEvent]
   */
  #request(message, onEvent) {
    if (this.#disposed) return { id: 0, done: Promise.reject(disposed('chat')) };
    return this.#link.request({ ...message, chat: this.#id }, onEvent);
  }

  /**
   * Adds a user turn and streams the reply as non-empty pieces of text. The worker makes each
   * piece when the loop asks for it, as on the page: leaving the loop early, or `signal`,
   * ends the reply there (the abort is forwarded, so the worker stops between tokens).
   * @param {string} text
   * @param {{ signal?: AbortSignal, onStep?: (info: object) => void, [option: string]: unknown }} [options]
   * @returns {AsyncGenerator<string, void, undefined>}
   */
  async *send(text, options = {}) {
    const { signal, onStep, ...reply } = options;
    if (signal?.aborted) return;
    const onEvent = (/** @type {any} */ event) => onStep?.(event.info);
    // The first request begins the reply; its id names the reply in the later ones.
    const first = this.#request({ type: 'send', text: String(text), options: reply, steps: !!onStep }, onEvent);
    const send = first.id;
    let piece = first.done;
    const abort = () => this.#link.post({ type: 'abort', send });
    signal?.addEventListener('abort', abort);
    let finished = false;
    try {
      for (;;) {
        const next = await piece;
        if (next.done) {
          finished = true;
          return;
        }
        yield next.value;
        if (signal?.aborted) return;
        piece = this.#request({ type: 'pull', send }, onEvent).done;
      }
    } catch (e) {
      finished = true; // the worker's loop has ended with the error
      throw e;
    } finally {
      signal?.removeEventListener('abort', abort);
      // Left early: the worker ends its loop, which cancels the reply.
      if (!finished) await this.#request({ type: 'return', send }, onEvent).done.catch(() => {});
    }
  }

  /**
   * The KV cache and the last reply's statistics.
   * @returns {Promise<object>}
   */
  info() {
    return this.#request({ type: 'chat-info' }).done;
  }

  /**
   * Forgets the conversation but the system message; a running reply ends.
   * @returns {Promise<void>}
   */
  reset() {
    return this.#request({ type: 'reset' }).done;
  }

  /**
   * Times each part of the last decode step on the GPU; ends the chat (see core.js).
   * @param {number} [repeat]
   * @returns {Promise<{ part: string, secs: number }[]>}
   */
  profileDecode(repeat = 3) {
    const profile = this.#request({ type: 'profile-decode', repeat }).done;
    this.#disposed = true;
    return profile;
  }

  /** Frees the chat's KV cache in the worker; later calls fail 'disposed'. */
  dispose() {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#link.post({ type: 'dispose-chat', chat: this.#id });
  }
}
