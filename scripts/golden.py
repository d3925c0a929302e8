#!/usr/bin/env python3
"""Golden reference data from llama.cpp for sinkstar's tests.

Runs llama.cpp (through llama-cpp-python, CPU only, n_threads=2, one fixed context and
batch configuration) on the default model SmolLM2-135M-Instruct.Q4_1.gguf and writes:

  tests/golden/tokenize.json  {"source", "model_sha256", "options", "cases": [{"text", "ids"}]}
      llama.cpp's tokenization of hard strings, add_bos=False (the GGUF says
      add_bos_token=false) and special=True (control-token text such as <|im_start|>
      inside a string maps to the control ids).
  tests/golden/logits.json    {"source", "model_sha256", "tolerance_note",
                               "cases": [{"name", "text", "chat", "tokens", "top"}]}
      top-10 [id, logit] pairs (descending) at the LAST prompt position.
  tests/golden/greedy.json    {"source", "model_sha256", "max_new_tokens", "eos_id", "stop_rule",
                               "cases": [{"name", "text", "chat", "tokens", "generated",
                                          "margins", "generated_text"}]}
      greedy continuations: at every step the argmax of llama.cpp's raw logits
      (np.argmax, so an exact tie goes to the lowest id), margins[i] = top1 - top2 logit
      at step i. Up to 48 new tokens; if EOS (id 2, <|im_end|>) is the argmax it is
      recorded as the last entry of "generated" (with its margin) and generation stops,
      so a case can have fewer than 48 entries.

Raw logits come from the low-level path only: Llama(logits_all=True), llm.eval(tokens),
then llm.scores[row] (the float32 logits llama_decode produced for that row); no sampler
or completion helper is involved. Chat prompts are rendered with jinja2 from the GGUF's own
`tokenizer.chat_template` metadata (same environment options as transformers /
llama-cpp-python: sandboxed, trim_blocks, lstrip_blocks, loopcontrols) and the rendered
string is stored in "text"; "tokens" is its tokenization (add_bos=False, special=True).

Deterministic: llama.cpp's CPU backend with a fixed thread count and batch size gives
bit-identical logits run to run (checked by running this script twice).

Rerun (after scripts/fetch-model.sh and `pip install -r scripts/requirements-golden.txt`):
    python3 scripts/golden.py [--model PATH] [--out-dir tests/golden]
Then rerun scripts/reference_f32.py, which reads the prompts from these files.
"""

import argparse
import hashlib
import json
import os
import platform
import sys

import numpy as np

N_THREADS = 2
N_CTX = 2048
N_BATCH = 512
MAX_NEW = 48
TOP_K = 10

# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------

TOKENIZE_CASES = [
    "",
    "Hello, world!",
    " leading space",
    "   three leading spaces and trailing   ",
    "Café naïve résumé Zürich — São Paulo, Ærøskøbing, señor, façade",
    "e\u0301 (e + combining acute) vs \u00e9 (precomposed)",
    "日本語のテキストと中文字符，还有한국어 문장。",
    "مرحبا بالعالم שלום עולם नमस्ते दुनिया",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 ∀x∈ℝ: x² ≥ 0",
    "I ❤️ Rust 🦀! Family: 👩‍👩‍👧‍👦, thumbs: 👍🏽, flag: 🇫🇷, ZWJ: 🧑‍💻 👨‍❤️‍👨",
    "a    b\t\tc\n\n\n d  \t \n e   \n",
    "\tindented\n\t\tdouble tab\r\nwindows line\r\n\n  \t  mixed \t\t\n",
    "3141592653589793238462643383279502884197 and 1,000,000.50 and 2024-11-24T00:07:00Z",
    "fn main() {\n    let xs: Vec<u32> = (0..10).map(|x| x * x).collect();\n"
    "    for (i, x) in xs.iter().enumerate() {\n        println!(\"{i}: {x}\");\n    }\n}\n",
    "def fib(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
    "    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "See https://example.com/path/to?q=rust%20wgpu&lang=en#frag or mailto:user@example.org.",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text before<|endoftext|>text after <|im_end|>",
    "don't, I'll, we're, they've, she'd, it's, DON'T, I'M, y'all'd've",
    "HeLLo WoRLD camelCaseIdentifier SCREAMING_SNAKE_CASE kebab-case PascalCase iPhone",
    "!!!???...---***<<<>>>{{}}[[]]",
    " ",
    "\n",
]

PLAIN_SENTENCE = "Once upon a time, in a small village by the sea, there lived"

CODE_PROMPT = (
    "def fibonacci(n):\n"
    "    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
    "    if n < 2:\n"
    "        return n\n"
    "    return"
)

CODE_PROMPT_RUST = (
    "/// Returns the sum of the squares of the even numbers in `xs`.\n"
    "fn sum_even_squares(xs: &[i64]) -> i64 {\n"
    "    xs.iter()\n"
)

FRANCE_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]

TWO_TURN_MESSAGES = [
    {"role": "system", "content": "You are a concise assistant. Answer in one short sentence."},
    {"role": "user", "content": "Name the three primary colors of paint."},
    {"role": "assistant", "content": "The three primary colors of paint are red, yellow and blue."},
    {"role": "user", "content": "Which of them is the color of a clear sky?"},
]

# Original prose written for this test (no third-party text); 500 < tokens < 1000.
LONG_PROSE = """The lighthouse on Gannet Point had been dark for eleven years when Mara Ellison arrived with a suitcase, a box of tools, and a letter from the county saying that the building was hers if she could make it stand. The town below the cliff was small enough that everyone knew about her by the second morning. The baker gave her a loaf of rye bread and a warning about the wind; the harbor master gave her a chart and a warning about the rocks; and the woman who ran the hardware store gave her a discount and no warning at all, which Mara later understood was the kindest thing anyone did for her that spring.

The tower itself was sound. Its walls were thick granite, cut from a quarry that no longer existed, and the spiral stair inside was iron, rusted at the edges but solid at the core. The trouble was everything else. Rain had come through the lantern room for a decade, the keeper's cottage had lost half its roof, and the old generator in the shed had been taken apart by someone who clearly meant to return and never did. Mara made a list on the first night, sitting on an upturned crate with a lamp beside her. It ran to four pages. She numbered every line, because a numbered list, her grandfather used to say, is a promise you can keep one piece at a time.

She began with the roof. For three weeks she climbed ladders in the early light, peeling away rotten boards and replacing them with new ones, nailing down tar paper and then slate. Her hands blistered, healed, and blistered again. In the afternoons she walked down to the harbor to buy supplies and listened to the fishermen argue about the weather, the price of diesel, and whether the mackerel would come early this year. They asked her, half joking, when the light would shine again. She told them the truth: she did not know, but she was counting the days.

The generator took longer. Its manual was missing, so she wrote her own, page by page, as she traced each wire and labeled each valve. Some parts she cleaned, some she rebuilt, and a few she ordered from a catalog printed before she was born. When the last gasket arrived by mail in June, she installed it, primed the fuel line, and pulled the cord. The machine coughed, shook, and then settled into a steady, patient rhythm, like a heart remembering what it was for.

The lens was the final problem and the most delicate. It was a great glass beehive of prisms, taller than she was, and every piece had to be washed by hand with vinegar and soft cloth. She worked on it through the long evenings of midsummer, when the sun barely set and the sea turned the color of pewter. One night in July, with the fog rolling in from the west, she climbed the stair, checked the fuel, and switched on the lamp. The beam swung out across the water, slow and bright, and far below, in the harbor, someone on a fishing boat sounded a horn, and then another, and then the whole town seemed to answer."""


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def default_model_path():
    home = os.environ.get("SINKSTAR_HOME") or os.path.expanduser("~/.cache/sinkstar")
    return os.path.join(home, "SmolLM2-135M-Instruct.Q4_1.gguf")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pkg_version(name):
    from importlib.metadata import version

    return version(name)


def render_chat(template, messages, bos_token, eos_token):
    """Render a chat with the GGUF's jinja template (transformers-compatible environment)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols],
    )
    return env.from_string(template).render(
        messages=messages,
        add_generation_prompt=True,
        bos_token=bos_token,
        eos_token=eos_token,
        raise_exception=raise_exception,
    )


def top_k(logits, k=TOP_K):
    """[[id, logit], ...] sorted by logit descending, ties by id ascending."""
    logits = np.asarray(logits, dtype=np.float32)
    order = np.lexsort((np.arange(logits.size), -logits.astype(np.float64)))[:k]
    return [[int(i), float(logits[i])] for i in order]


def top2_margin(logits):
    logits = np.asarray(logits, dtype=np.float32)
    i = int(np.argmax(logits))
    rest = logits.copy()
    rest[i] = -np.inf
    return i, float(logits[i]) - float(np.max(rest))


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)", file=sys.stderr)


class LlamaRunner:
    def __init__(self, model_path):
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=model_path,
            n_ctx=N_CTX,
            n_batch=N_BATCH,
            n_ubatch=N_BATCH,
            n_threads=N_THREADS,
            n_threads_batch=N_THREADS,
            n_gpu_layers=0,
            logits_all=True,
            flash_attn=False,
            seed=0,
            verbose=False,
        )
        self.n_vocab = self.llm.n_vocab()

    def tokenize(self, text):
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def detokenize(self, ids):
        return self.llm.detokenize(list(ids), special=True).decode("utf-8", errors="replace")

    def prompt_logits(self, tokens):
        """Fresh context, evaluate the prompt; returns a copy of the last row's logits."""
        self.llm.reset()
        self.llm.eval(tokens)
        return np.array(self.llm.scores[len(tokens) - 1], dtype=np.float32, copy=True)

    def greedy(self, tokens, max_new, eos_id):
        logits = self.prompt_logits(tokens)
        generated, margins = [], []
        for _ in range(max_new):
            tok, margin = top2_margin(logits)
            generated.append(tok)
            margins.append(margin)
            if tok == eos_id:
                break
            n = self.llm.n_tokens
            self.llm.eval([tok])
            logits = np.array(self.llm.scores[n], dtype=np.float32, copy=True)
        return generated, margins


def build_prompts(runner, template, bos, eos):
    france = render_chat(template, FRANCE_MESSAGES, bos, eos)
    two_turn = render_chat(template, TWO_TURN_MESSAGES, bos, eos)
    return {
        "plain_sentence": (PLAIN_SENTENCE, False),
        "code_python": (CODE_PROMPT, False),
        "code_rust": (CODE_PROMPT_RUST, False),
        "chat_france": (france, True),
        "chat_two_turn": (two_turn, True),
        "long_prose": (LONG_PROSE, False),
    }


LOGITS_CASES = ["plain_sentence", "code_python", "chat_france", "chat_two_turn", "long_prose"]
GREEDY_CASES = ["plain_sentence", "code_python", "code_rust", "chat_france", "chat_two_turn"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default_model_path(), help="path to SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument(
        "--out-dir",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden"),
        help="output directory (default: tests/golden)",
    )
    args = ap.parse_args()
    out_dir = os.path.normpath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)

    model_sha = sha256_file(args.model)
    runner = LlamaRunner(args.model)
    meta = runner.llm.metadata
    template = meta["tokenizer.chat_template"]
    vocab_bos = int(meta["tokenizer.ggml.bos_token_id"])
    vocab_eos = int(meta["tokenizer.ggml.eos_token_id"])
    bos = runner.detokenize([vocab_bos])
    eos = runner.detokenize([vocab_eos])
    assert meta.get("tokenizer.ggml.add_bos_token", "false") == "false", meta.get("tokenizer.ggml.add_bos_token")

    source = (
        f"llama.cpp via llama-cpp-python {pkg_version('llama-cpp-python')} (CPU, n_threads={N_THREADS}, "
        f"n_ctx={N_CTX}, n_batch=n_ubatch={N_BATCH}, flash_attn=off, f16 KV cache, logits_all); "
        f"jinja2 {pkg_version('jinja2')}, numpy {np.__version__}, python {platform.python_version()}; "
        f"model SmolLM2-135M-Instruct.Q4_1.gguf; generated by scripts/golden.py"
    )

    # --- tokenize.json
    tok_cases = [{"text": t, "ids": runner.tokenize(t)} for t in TOKENIZE_CASES]
    write_json(
        os.path.join(out_dir, "tokenize.json"),
        {
            "source": source,
            "model_sha256": model_sha,
            "options": {"add_bos": False, "special": True},
            "cases": tok_cases,
        },
    )

    prompts = build_prompts(runner, template, bos, eos)
    tokens = {name: runner.tokenize(text) for name, (text, _) in prompts.items()}
    n_long = len(tokens["long_prose"])
    assert 500 < n_long < 1000, f"long_prose has {n_long} tokens"

    # --- logits.json
    logit_cases = []
    for name in LOGITS_CASES:
        text, chat = prompts[name]
        logits = runner.prompt_logits(tokens[name])
        logit_cases.append({"name": name, "text": text, "chat": chat, "tokens": tokens[name], "top": top_k(logits)})
    write_json(
        os.path.join(out_dir, "logits.json"),
        {
            "source": source,
            "model_sha256": model_sha,
            "tolerance_note": (
                "llama.cpp's CPU path quantizes every activation vector to 8 bits per 32 values "
                "(Q8_1 for the Q4_1 matrices, Q8_0 for the tied Q8_0 LM head) before each matmul and keeps "
                "K/V in f16, so an exact f32 forward pass differs from these logits by up to about 1 logit "
                "(see logits_f32.json, from scripts/reference_f32.py, for the exact f32 values). Compare a "
                "runtime's top-10 logits to these with |diff| <= ~1.0 and expect the same top-1 unless the "
                "top-2 gap here is under ~1; compare against logits_f32.json much more tightly."
            ),
            "cases": logit_cases,
        },
    )

    # --- greedy.json
    greedy_cases = []
    for name in GREEDY_CASES:
        text, chat = prompts[name]
        gen, margins = runner.greedy(tokens[name], MAX_NEW, vocab_eos)
        greedy_cases.append(
            {
                "name": name,
                "text": text,
                "chat": chat,
                "tokens": tokens[name],
                "generated": gen,
                "margins": [round(m, 5) for m in margins],
                "generated_text": runner.detokenize(gen),
            }
        )
    write_json(
        os.path.join(out_dir, "greedy.json"),
        {
            "source": source,
            "model_sha256": model_sha,
            "max_new_tokens": MAX_NEW,
            "eos_id": vocab_eos,
            "stop_rule": (
                "argmax of llama.cpp's raw logits at every step (np.argmax: an exact tie goes to the lowest "
                "id); at most max_new_tokens steps; if the argmax is eos_id it is recorded (with its margin) "
                "as the last generated id and generation stops, so a case may have fewer entries. "
                "margins[i] = top1 - top2 logit at step i. Compare a runtime's greedy path to this one only "
                "up to the first step whose margin here is under ~1 logit (llama.cpp is not exact f32; "
                "greedy_f32.json is the exact f32 path)."
            ),
            "cases": greedy_cases,
        },
    )


if __name__ == "__main__":
    main()
