#!/usr/bin/env python3
"""Independent exact f32 forward pass of SmolLM2-135M-Instruct.Q4_1.gguf in numpy.

Weights are dequantized with the `gguf` Python package (gguf.GGUFReader +
gguf.quants.dequantize) to float32 and every computation stays in float32 (numpy float32
arrays, float32 BLAS matmuls). The only float64 step: RoPE angles p * base^(-2i/d) and
their cos/sin are computed in float64 and then cast to float32 before use.

The forward pass follows /work/shared/notes/model.md §5 exactly, with every hyperparameter
read from the GGUF metadata (block_count, embedding_length, feed_forward_length,
head_count, head_count_kv, rope.freq_base, layer_norm_rms_epsilon, rope.dimension_count):

    x = token_embd[t]                             (Q8_0 row, dequantized)
    per layer: h = rmsnorm(x) * attn_norm; q,k,v = Wq h, Wk h, Wv h
               interleaved (adjacent-pair) RoPE on the GGUF row order (llama.cpp ROPE_TYPE_NORM)
               query head i uses KV head i // (n_head / n_head_kv); causal softmax(q.k / sqrt(d))
               x += Wo attn;  h = rmsnorm(x) * ffn_norm;  x += Wdown (silu(Wgate h) * Wup h)
    logits = token_embd . (rmsnorm(x) * output_norm)   (tied LM head, no output.weight)

The prompt is processed in one causal batch; decoding uses a KV cache (f32).

It reads the prompts ("tokens") from the llama.cpp golden files and writes:
  tests/golden/logits_f32.json  same schema as logits.json, top-10 from this f32 pass
  tests/golden/greedy_f32.json  same schema as greedy.json; the f32 pass follows its OWN
                                argmax (same stop rule: up to 48 steps, EOS recorded then stop),
                                margins = top1 - top2 of the f32 logits.
Generated text is decoded from the GGUF vocab (byte-level BPE, GPT-2 byte map) without
llama.cpp. It also prints, per case, max |f32 - llama.cpp| over the top-10 ids present in
both lists and where the greedy paths diverge, and fails if the France chat answer is not
"The capital of France is Paris.".

With --f64-check it also runs the logits cases with the same code in float64 and stores
max |f32 - f64| over the f32 top-10 per case (a measure of f32 rounding; informational).

Rerun (after scripts/golden.py):
    python3 scripts/reference_f32.py [--model PATH] [--golden-dir tests/golden] [--f64-check]
"""

import argparse
import hashlib
import json
import os
import platform
import sys

import numpy as np

MAX_NEW = 48
TOP_K = 10


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


# ---------------------------------------------------------------------------------------
# Model loading
# ---------------------------------------------------------------------------------------


def field_value(reader, key):
    f = reader.fields[key]
    return f.contents()


class Model:
    def __init__(self, path, dtype=np.float32):
        import gguf

        self.dtype = dtype
        r = gguf.GGUFReader(path)
        arch = field_value(r, "general.architecture")
        assert arch == "llama", arch
        g = lambda k: field_value(r, f"{arch}.{k}")  # noqa: E731
        self.n_layer = int(g("block_count"))
        self.d_model = int(g("embedding_length"))
        self.d_ff = int(g("feed_forward_length"))
        self.n_head = int(g("attention.head_count"))
        self.n_head_kv = int(g("attention.head_count_kv"))
        self.eps = float(g("attention.layer_norm_rms_epsilon"))
        self.rope_base = float(g("rope.freq_base"))
        self.head_dim = self.d_model // self.n_head
        rope_dim_key = f"{arch}.rope.dimension_count"
        self.rope_dim = int(field_value(r, rope_dim_key)) if rope_dim_key in r.fields else self.head_dim
        assert self.rope_dim == self.head_dim, "partial RoPE not implemented"
        assert self.n_head % self.n_head_kv == 0
        self.group = self.n_head // self.n_head_kv
        self.eos_id = int(field_value(r, "tokenizer.ggml.eos_token_id"))
        self.vocab = list(field_value(r, "tokenizer.ggml.tokens"))
        self.token_type = list(field_value(r, "tokenizer.ggml.token_type"))

        tensors = {t.name: t for t in r.tensors}

        def deq(name):
            t = tensors[name]
            ne = [int(x) for x in t.shape]  # ggml ne order: ne[0] contiguous
            a = gguf.quants.dequantize(t.data, t.tensor_type)
            a = np.asarray(a, dtype=np.float32).reshape(list(reversed(ne)))
            return np.ascontiguousarray(a.astype(dtype))

        self.tok_embd = deq("token_embd.weight")  # [n_vocab][d_model]
        self.n_vocab = self.tok_embd.shape[0]
        assert self.tok_embd.shape == (self.n_vocab, self.d_model)
        assert "output.weight" not in tensors, "untied LM head not expected for this model"
        self.output_norm = deq("output_norm.weight")
        self.layers = []
        for i in range(self.n_layer):
            p = f"blk.{i}."
            L = {
                "attn_norm": deq(p + "attn_norm.weight"),
                "wq": deq(p + "attn_q.weight"),
                "wk": deq(p + "attn_k.weight"),
                "wv": deq(p + "attn_v.weight"),
                "wo": deq(p + "attn_output.weight"),
                "ffn_norm": deq(p + "ffn_norm.weight"),
                "wgate": deq(p + "ffn_gate.weight"),
                "wup": deq(p + "ffn_up.weight"),
                "wdown": deq(p + "ffn_down.weight"),
            }
            hd = self.head_dim
            assert L["wq"].shape == (self.n_head * hd, self.d_model)
            assert L["wk"].shape == (self.n_head_kv * hd, self.d_model)
            assert L["wv"].shape == (self.n_head_kv * hd, self.d_model)
            assert L["wo"].shape == (self.d_model, self.n_head * hd)
            assert L["wgate"].shape == (self.d_ff, self.d_model)
            assert L["wdown"].shape == (self.d_model, self.d_ff)
            self.layers.append(L)

        # RoPE inverse frequencies base^(-2i/d), i = 0..d/2-1 (float64; angles cast to dtype later)
        self.inv_freq = self.rope_base ** (-np.arange(0, self.rope_dim, 2, dtype=np.float64) / self.rope_dim)

    # -- math -------------------------------------------------------------------------

    def rmsnorm(self, x, w):
        ms = np.mean(x * x, axis=-1, keepdims=True, dtype=self.dtype)
        return (x / np.sqrt(ms + self.dtype(self.eps))) * w

    def rope(self, x, positions):
        """x: [n, heads, head_dim]; interleaved pairs (x[2i], x[2i+1]) rotated by p*inv_freq[i]."""
        ang = np.asarray(positions, dtype=np.float64)[:, None] * self.inv_freq[None, :]  # [n, d/2]
        cos = np.cos(ang).astype(self.dtype)[:, None, :]
        sin = np.sin(ang).astype(self.dtype)[:, None, :]
        x0 = x[..., 0::2]
        x1 = x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * cos - x1 * sin
        out[..., 1::2] = x0 * sin + x1 * cos
        return out

    @staticmethod
    def silu(z):
        return z / (1 + np.exp(-z))

    def new_cache(self, max_len):
        shape = (self.n_layer, self.n_head_kv, max_len, self.head_dim)
        return {"k": np.zeros(shape, self.dtype), "v": np.zeros(shape, self.dtype), "n": 0}

    def forward(self, tokens, cache, all_logits=False):
        """Appends `tokens` at positions cache['n']..; returns logits of the last position
        (or all positions) as float arrays."""
        dt = self.dtype
        n = len(tokens)
        p0 = cache["n"]
        pos = np.arange(p0, p0 + n)
        hd, H, Hkv = self.head_dim, self.n_head, self.n_head_kv
        scale = dt(1.0 / np.sqrt(hd))
        x = self.tok_embd[np.asarray(tokens)].astype(dt)  # [n, d]
        # causal mask for new queries against all cached keys (0..p0+n-1)
        kpos = np.arange(p0 + n)
        mask = np.where(kpos[None, :] <= pos[:, None], dt(0), dt(-np.inf)).astype(dt)  # [n, p0+n]
        for li, L in enumerate(self.layers):
            h = self.rmsnorm(x, L["attn_norm"])
            q = (h @ L["wq"].T).reshape(n, H, hd)
            k = (h @ L["wk"].T).reshape(n, Hkv, hd)
            v = (h @ L["wv"].T).reshape(n, Hkv, hd)
            q = self.rope(q, pos)
            k = self.rope(k, pos)
            cache["k"][li, :, p0 : p0 + n, :] = k.transpose(1, 0, 2)
            cache["v"][li, :, p0 : p0 + n, :] = v.transpose(1, 0, 2)
            K = cache["k"][li, :, : p0 + n, :]  # [Hkv, T, hd]
            V = cache["v"][li, :, : p0 + n, :]
            att = np.empty((n, H, hd), dt)
            for hq in range(H):
                j = hq // self.group
                s = (q[:, hq, :] @ K[j].T) * scale + mask  # [n, T]
                s = s - s.max(axis=-1, keepdims=True)
                e = np.exp(s)
                pr = e / e.sum(axis=-1, keepdims=True)
                att[:, hq, :] = pr @ V[j]
            x = x + att.reshape(n, H * hd) @ L["wo"].T
            h = self.rmsnorm(x, L["ffn_norm"])
            g = h @ L["wgate"].T
            u = h @ L["wup"].T
            x = x + (self.silu(g) * u) @ L["wdown"].T
            assert x.dtype == dt
        cache["n"] = p0 + n
        hs = x if all_logits else x[-1:]
        logits = self.rmsnorm(hs, self.output_norm) @ self.tok_embd.T
        assert logits.dtype == dt
        return logits if all_logits else logits[0]

    # -- tokenizer decode (byte-level BPE) -----------------------------------------------

    def decode(self, ids):
        byte_dec = {v: k for k, v in bytes_to_unicode().items()}
        out = bytearray()
        for i in ids:
            s = self.vocab[i]
            if self.token_type[i] == 1:  # normal: GPT-2 byte-mapped characters
                out += bytes(byte_dec[c] for c in s)
            else:  # control / user-defined: literal text
                out += s.encode("utf-8")
        return out.decode("utf-8", errors="replace")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def top_k(logits, k=TOP_K):
    logits = np.asarray(logits, dtype=np.float32)
    order = np.lexsort((np.arange(logits.size), -logits.astype(np.float64)))[:k]
    return [[int(i), float(logits[i])] for i in order]


def top2_margin(logits):
    logits = np.asarray(logits, dtype=np.float32)
    i = int(np.argmax(logits))
    rest = logits.copy()
    rest[i] = -np.inf
    return i, float(logits[i]) - float(np.max(rest))


def greedy(model, tokens, max_new):
    cache = model.new_cache(len(tokens) + max_new + 1)
    logits = model.forward(tokens, cache)
    gen, margins = [], []
    for _ in range(max_new):
        tok, m = top2_margin(logits)
        gen.append(tok)
        margins.append(m)
        if tok == model.eos_id:
            break
        logits = model.forward([tok], cache)
    return gen, margins


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)", file=sys.stderr)


def compare_top(ref_top, f32_top):
    a = {i: v for i, v in ref_top}
    b = {i: v for i, v in f32_top}
    common = sorted(set(a) & set(b))
    return max(abs(a[i] - b[i]) for i in common), len(common)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default_model_path(), help="path to SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument(
        "--golden-dir",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden"),
        help="directory with logits.json / greedy.json; outputs go there too",
    )
    ap.add_argument("--f64-check", action="store_true", help="also measure f32 vs f64 on the logits cases")
    args = ap.parse_args()
    gdir = os.path.normpath(args.golden_dir)

    with open(os.path.join(gdir, "logits.json"), encoding="utf-8") as f:
        ref_logits = json.load(f)
    with open(os.path.join(gdir, "greedy.json"), encoding="utf-8") as f:
        ref_greedy = json.load(f)
    model_sha = sha256_file(args.model)
    assert model_sha == ref_logits["model_sha256"] == ref_greedy["model_sha256"], "model differs from golden files"

    model = Model(args.model, np.float32)
    model64 = Model(args.model, np.float64) if args.f64_check else None
    source = (
        f"scripts/reference_f32.py: numpy {np.__version__} float32 forward pass over gguf {pkg_version('gguf')} "
        f"dequantization (gguf.quants.dequantize), RoPE angles in float64 cast to float32, KV cache in float32; "
        f"python {platform.python_version()}; model SmolLM2-135M-Instruct.Q4_1.gguf; prompts from logits.json/greedy.json"
    )
    ok = True

    cases = []
    print("logits: max |f32 - llama.cpp| over top-10 ids in both", file=sys.stderr)
    for c in ref_logits["cases"]:
        cache = model.new_cache(len(c["tokens"]))
        logits = model.forward(c["tokens"], cache)
        top = top_k(logits)
        out = {"name": c["name"], "text": c["text"], "chat": c["chat"], "tokens": c["tokens"], "top": top}
        d, ncommon = compare_top(c["top"], top)
        out["max_abs_diff_vs_llamacpp_top10"] = round(d, 5)
        if model64 is not None:
            l64 = model64.forward(c["tokens"], model64.new_cache(len(c["tokens"])))
            ids = [i for i, _ in top]
            out["max_abs_diff_vs_f64_top10"] = float(np.max(np.abs(logits[ids].astype(np.float64) - l64[ids])))
        cases.append(out)
        same_top1 = c["top"][0][0] == top[0][0]
        print(
            f"  {c['name']:16s} n={len(c['tokens']):4d} max|d|={d:.4f} over {ncommon} common ids, "
            f"top1 same={same_top1}" + (f", f32-f64={out['max_abs_diff_vs_f64_top10']:.2e}" if model64 else ""),
            file=sys.stderr,
        )
        if d > 1.0:
            ok = False
            print(f"  WARNING: {c['name']} differs by more than 1 logit from llama.cpp", file=sys.stderr)
    write_json(
        os.path.join(gdir, "logits_f32.json"),
        {
            "source": source,
            "model_sha256": model_sha,
            "tolerance_note": (
                "Exact f32 pass (weights dequantized to f32, f32 activations and KV, f32 accumulation). "
                "A runtime that dequantizes to f32 and computes in f32 should match these up to rounding "
                "(summation order, exp/sqrt implementations) only: a tolerance of ~0.01-0.05 on the top-10 "
                "logits is generous (this same code run in float64 moves them by ~1e-5), and the same "
                "top-10 ids in the same order except for near-ties. max_abs_diff_vs_llamacpp_top10 is the max "
                "|f32 - llama.cpp| over the ids in both top-10 lists (llama.cpp quantizes activations to 8 bits)."
                + (" max_abs_diff_vs_f64_top10 is |f32 - f64| of this same code." if model64 else "")
            ),
            "cases": cases,
        },
    )

    gcases = []
    print("greedy: first divergence from llama.cpp", file=sys.stderr)
    for c in ref_greedy["cases"]:
        gen, margins = greedy(model, c["tokens"], ref_greedy["max_new_tokens"])
        text = model.decode(gen)
        ref = c["generated"]
        div = next((i for i in range(min(len(gen), len(ref))) if gen[i] != ref[i]), None)
        if div is None and len(gen) != len(ref):
            div = min(len(gen), len(ref))
        gcases.append(
            {
                "name": c["name"],
                "text": c["text"],
                "chat": c["chat"],
                "tokens": c["tokens"],
                "generated": gen,
                "margins": [round(m, 5) for m in margins],
                "generated_text": text,
                "first_divergence_from_llamacpp": div,
                "llamacpp_margin_at_divergence": (
                    c["margins"][div] if div is not None and div < len(c["margins"]) else None
                ),
            }
        )
        print(
            f"  {c['name']:16s} diverge_at={div} llama_margin_there="
            f"{gcases[-1]['llamacpp_margin_at_divergence']} f32 text={text!r}",
            file=sys.stderr,
        )
        if c["name"] == "chat_france":
            want = "The capital of France is Paris."
            if not text.startswith(want):
                ok = False
                print(f"  ERROR: France answer {text!r} does not start with {want!r}", file=sys.stderr)
    write_json(
        os.path.join(gdir, "greedy_f32.json"),
        {
            "source": source,
            "model_sha256": model_sha,
            "max_new_tokens": ref_greedy["max_new_tokens"],
            "eos_id": model.eos_id,
            "stop_rule": (
                "argmax of the f32 logits at every step (np.argmax: exact tie goes to the lowest id), following "
                "the f32 pass's own choices; at most max_new_tokens steps; if the argmax is eos_id it is recorded "
                "(with its margin) as the last generated id and generation stops. margins[i] = top1 - top2 f32 "
                "logit at step i. first_divergence_from_llamacpp: first step where this path differs from "
                "greedy.json (null if identical)."
            ),
            "cases": gcases,
        },
    )
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
