// Types of the sinkstar package (src/index.js). The same Model and Chat interfaces describe a
// model on the page (`Sinkstar.load`) and one in a worker (`Sinkstar.inWorker`).

/** Where a model file comes from. Bytes and Blobs given to `inWorker` are transferred to it. */
export type ModelSource = string | URL | Response | Blob | ArrayBuffer | ArrayBufferView;

/** How far a load has come. */
export interface LoadProgress {
  /**
   * `'download'`: bytes read from the network (or from a Response or Blob); `'cache'`: read
   * back from the Cache API; `'gpu'`: the model being uploaded to the GPU (0, then the total).
   */
  phase: 'download' | 'cache' | 'gpu';
  /** Bytes done. */
  loaded: number;
  /** Bytes in all, or null when the server did not say. */
  total: number | null;
}

export interface LoadOptions {
  /** Called as the model file downloads and uploads. */
  onProgress?: (progress: LoadProgress) => void;
  /**
   * Keep URL sources in the Cache API (cache 'sinkstar-models', keyed by absolute URL) once
   * they have loaded, so that the next load reads them from there. Default true.
   */
  cache?: boolean;
  /** URL of sinkstar_bg.wasm; by default the copy next to the package's wasm/sinkstar.js. */
  wasm?: string | URL;
}

/** The GPU adapter and the model, from `model.info()`. */
export interface ModelInfo {
  adapter: {
    name: string;
    backend: string;
    deviceType: string;
    driver: string;
    hasShaderF16: boolean;
    maxStorageBufferBindingSize: number;
  };
  /** Whether the kernels use f16 (the f32 path runs everywhere else). */
  shaderF16: boolean;
  model: {
    name: string;
    /** Weight format, e.g. 'Q4_1'. */
    weights: string;
    layers: number;
    dim: number;
    heads: number;
    kvHeads: number;
    vocab: number;
    /** The context length the model was trained for. */
    context: number;
  };
  /** GPU memory the runtime has allocated, in bytes. */
  gpuBytes: number;
  /** Every open chat's policy and cache fill, in the order the chats were made. */
  chats: ChatInfo[];
}

/** How the KV cache keeps the conversation. */
export interface AttentionOptions {
  /**
   * `'sink'` (default): the first `sinks` tokens forever plus a ring of the last `window`
   * (StreamingLLM: endless chat in constant memory); `'window'`: the ring alone; `'dense'`: a
   * growing cache of `context` slots that fails when full; `'recompute'`: a window recomputed
   * from the text when it slides.
   */
  policy?: 'sink' | 'window' | 'dense' | 'recompute';
  /** Attention-sink tokens kept forever (sink policy). Default 4. */
  sinks?: number;
  /** Slots of the sliding window. Default 2044. */
  window?: number;
  /** Slots of a dense cache. Default: the model's context length. */
  context?: number;
  /** Pin the whole system prompt as sinks (sink policy). Default false. */
  keepSystem?: boolean;
}

/** How tokens are sampled. `temperature: 0` is greedy (and deterministic). */
export interface SamplingOptions {
  /** Default 0.8. */
  temperature?: number;
  /** Default 40. */
  topK?: number;
  /** Default 0.95. */
  topP?: number;
  /** Default 1.0 (off). */
  repetitionPenalty?: number;
  /** Tokens the repetition penalty looks back over. Default 64. */
  penaltyLastN?: number;
  /** Seed of the sampler. Default 0. */
  seed?: number;
}

export interface ChatOptions {
  /** The system message, kept across `reset()`. */
  system?: string;
  attention?: AttentionOptions;
  /** Defaults for every reply of this chat. */
  sampling?: SamplingOptions;
  /** Most tokens a reply generates. Default 512. */
  maxTokens?: number;
}

export interface SendOptions extends SamplingOptions {
  /** Most tokens this reply generates (overrides the chat's). */
  maxTokens?: number;
  /**
   * Stops the reply before its next token; what it said stays in the conversation and the
   * loop simply ends (no error).
   */
  signal?: AbortSignal;
  /** Called with the chat's state after every token and once when the reply has ended. */
  onStep?: (info: ChatInfo) => void;
}

/** Statistics of a finished reply. */
export interface ReplyStats {
  /** Tokens fed before the reply (the new turn's prompt). */
  promptTokens: number;
  /** Tokens generated. */
  tokens: number;
  tokenIds: number[];
  stop: 'eos' | 'maxtokens' | 'cancelled';
  prefillSecs: number;
  decodeSecs: number;
  decodeTokensPerSec: number;
}

/** The KV cache of a chat and its last reply, from `chat.info()` and `onStep`. */
export interface ChatInfo {
  policy: 'sink' | 'window' | 'dense' | 'recompute';
  /** Sink slots (for 'dense': the capacity). */
  sinks: number;
  window: number;
  /** Slots of the cache in all. */
  slots: number;
  /** Slots holding a token. */
  filled: number;
  /** Tokens the chat has seen since it began or was reset. */
  seen: number;
  /** The slot the next token goes to. */
  writeSlot: number;
  /** Whether a reply is running. */
  replying: boolean;
  gpuBytes: number;
  /** The last finished reply, or null before the first. */
  last: ReplyStats | null;
}

/** A conversation with its own KV cache. Its calls run one after another. */
export interface Chat {
  /**
   * Adds a user turn and streams the reply as non-empty pieces of text, starting when the
   * loop first asks. Leaving the loop early (or `signal`) ends the reply; a later `send` or
   * `reset` ends this one too.
   */
  send(text: string, options?: SendOptions): AsyncGenerator<string, void, undefined>;
  /** The KV cache and the last reply's statistics. */
  info(): Promise<ChatInfo>;
  /** Forgets the conversation but the system message. */
  reset(): Promise<void>;
  /**
   * Times each part of the last decode step on the GPU, as `sinkstar bench` does natively
   * (every layer's dispatches of one part alone, `repeat` runs, default 3, median seconds).
   * Its re-runs overwrite the KV cache, so it ends the chat: later calls reject with code
   * 'disposed'. Rejects with code 'model' before any decode step.
   */
  profileDecode(repeat?: number): Promise<DecodePart[]>;
  /** Frees the KV cache; later calls reject with code 'disposed'. */
  dispose(): void;
}

/** One part of a decode step in `chat.profileDecode()`. */
export interface DecodePart {
  /** What the part computes, e.g. 'norm + gate/up projection + SwiGLU'. */
  part: string;
  /** Median seconds of the part alone, for every layer. */
  secs: number;
}

/** From `model.bandwidth()`: the yardsticks `sinkstar bench` measures natively. */
export interface Bandwidth {
  /** Bytes per second the adapter reads from one large buffer (the `stream` kernel). */
  streamBytesPerSec: number;
  /** Seconds a dispatch costs beyond its work. */
  dispatchOverheadSecs: number;
  /** Bytes of weights one decoded token reads: times a decode rate, decode's bandwidth. */
  weightBytesPerToken: number;
}

/** A model on the GPU. */
export interface Model {
  /** The adapter, the model's shape and the GPU memory in use. */
  info(): Promise<ModelInfo>;
  /** What the adapter streams and what a decoded token reads (a few seconds of GPU work). */
  bandwidth(): Promise<Bandwidth>;
  /** A new conversation; bad options reject its first call (code 'options'). */
  chat(options?: ChatOptions): Chat;
  /** Frees the model and its chats; later calls throw code 'disposed'. */
  dispose(): void;
}

/** What went wrong, as `SinkstarError.code`. */
export type ErrorCode =
  | 'no-webgpu'
  | 'no-adapter'
  | 'gpu-limit'
  | 'gpu'
  | 'bad-model-file'
  | 'model'
  | 'tokenizer'
  | 'kernel'
  | 'policy'
  | 'context-full'
  | 'sampling'
  | 'input'
  | 'options'
  | 'busy'
  | 'fetch'
  | 'disposed'
  | 'worker'
  | 'internal';

/** Every error the package throws or rejects with. */
export class SinkstarError extends Error {
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown });
  name: 'SinkstarError';
  code: ErrorCode;
}

/** Loads models. */
export const Sinkstar: {
  /** Loads a GGUF model onto this thread's WebGPU device. */
  load(source: ModelSource, options?: LoadOptions): Promise<Model>;
  /**
   * Loads a GGUF model in a dedicated module worker, so that the page's thread stays free;
   * the model and its chats have the same methods as with `load`.
   */
  inWorker(source: ModelSource, options?: LoadOptions): Promise<Model>;
};
