// sinkstar: a small LLM on the browser's GPU. The public API is `Sinkstar` and
// `SinkstarError`; index.d.ts describes every type. The model runs on the calling thread
// (core.js) or in a dedicated worker (remote.js talking to worker.js) behind the same methods.

import { loadModel, SinkstarError } from './core.js';
import { loadInWorker } from './remote.js';

export { SinkstarError };

/** Loads models; see index.d.ts for the options and what a model and its chats do. */
export const Sinkstar = Object.freeze({
  /**
   * Loads a GGUF model onto this thread's WebGPU device.
   * @param {string | URL | Response | Blob | ArrayBuffer | ArrayBufferView} source
   * @param {import('./core.js').LoadOptions} [options]
   */
  load: (source, options) => loadModel(source, options),

  /**
   * Loads a GGUF model in a dedicated module worker, so that the page's thread stays free;
   * the model and its chats have the same methods as with `load`.
   * @param {string | URL | Response | Blob | ArrayBuffer | ArrayBufferView} source
   * @param {import('./core.js').LoadOptions} [options]
   */
  inWorker: (source, options) => loadInWorker(source, options),
});
