// Type-checked (never run) by tests/npm/run.sh with `tsc --noEmit` against the packed package:
// the declarations in pkg/index.d.ts must describe this usage, and reject the marked mistake.
import { Sinkstar, SinkstarError } from 'sinkstar';
import type { ChatInfo, DecodePart, ErrorCode, LoadProgress, Model, ModelInfo } from 'sinkstar';

export async function usage(file: File, bytes: Uint8Array): Promise<string> {
  const phases: LoadProgress['phase'][] = [];
  const model: Model = await Sinkstar.load('/models/SmolLM2-135M-Instruct.Q4_1.gguf', {
    onProgress: ({ phase, loaded, total }) => {
      phases.push(phase);
      const fraction: number | null = total === null ? null : loaded / total;
      void fraction;
    },
    cache: false,
    wasm: new URL('/assets/sinkstar_bg.wasm', location.href),
  });
  const info: ModelInfo = await model.info();
  const layers: number = info.model.layers;
  const f16: boolean = info.shaderF16 && info.adapter.hasShaderF16;

  const chat = model.chat({
    system: 'You are terse.',
    attention: { policy: 'sink', sinks: 4, window: 2044, keepSystem: true },
    sampling: { temperature: 0.7, topK: 40, topP: 0.9, repetitionPenalty: 1.1, penaltyLastN: 64, seed: 7 },
    maxTokens: 128,
  });
  const controller = new AbortController();
  let text = '';
  let tokensPerSec = 0;
  for await (const piece of chat.send('Hello!', {
    signal: controller.signal,
    maxTokens: 32,
    temperature: 0,
    onStep: (state: ChatInfo) => {
      tokensPerSec = state.last?.decodeTokensPerSec ?? 0;
      const ring: number = state.writeSlot % state.slots;
      void ring;
    },
  })) {
    text += piece;
  }
  const state = await chat.info();
  const stop: 'eos' | 'maxtokens' | 'cancelled' | undefined = state.last?.stop;
  await chat.reset();
  chat.dispose();
  const profiled = model.chat({});
  const parts: DecodePart[] = await profiled.profileDecode(3);
  const gateUpSecs: number = parts.find((p) => p.part.startsWith('norm + gate/up'))?.secs ?? 0;
  model.dispose();

  // The worker form takes the same sources and gives the same interface.
  const inWorker: Model = await Sinkstar.inWorker(file, { onProgress: (p) => console.log(p.phase) });
  await Sinkstar.inWorker(bytes);
  await Sinkstar.inWorker(new Response(file));
  inWorker.dispose();

  try {
    await Sinkstar.load(new URL('https://example.com/model.gguf'));
  } catch (e) {
    if (e instanceof SinkstarError) {
      const code: ErrorCode = e.code;
      if (code === 'no-webgpu' || code === 'fetch') return e.message;
    }
  }

  // @ts-expect-error temperature is a number, not a string
  model.chat({ sampling: { temperature: 'hot' } });
  // @ts-expect-error an unknown attention policy
  model.chat({ attention: { policy: 'full' } });

  return `${text} ${layers} ${f16} ${tokensPerSec} ${stop} ${phases.length} ${gateUpSecs}`;
}
