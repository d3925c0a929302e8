#!/usr/bin/env python3
"""Golden logits of small random Multi-Token Attention Llamas, from PyTorch (CPU, float64).

Implements a Llama with MTA attention from ../shared/specs/mta.md alone (none of sinkstar's
code): Hugging Face conventions (rotate-half RoPE on the stored q_proj/k_proj rows, RMSNorm,
SwiGLU, GQA by repeating kv heads), and per layer, on whole T x T maps as the paper's reference
does: pre-softmax key-query convolution of Mask_0(QK^T/sqrt(d)) (zero padding: c_q - 1 rows on
top, (c_k - 1) / 2 columns each side, a cross-correlation), pre-softmax head mixing, the -inf
causal mask and softmax, post-softmax convolution masked before and after (no renormalisation),
post-softmax head mixing, P V, then the per-head RMS group norm (eps 1e-5) with its scalar or
vector sigmoid gate and the depth factor 1 - (0.8 - 0.6 exp(-0.3 l)).

Two models exercise every switch between them (src/model/hf.rs documents the file format):
  a: float32, 3 layers, 4 query heads over 2 kv heads of 16, tied embeddings; convolutions in
     layer 1 (pre 3x5, post 2x3), both mixes over all 4 heads, group norm, scalar gate.
  b: bfloat16 matrices, float16 norms and MTA tensors, 2 layers, 6 heads over 3 kv heads of 8,
     an LM head of its own; a 6x11 pre-softmax convolution in layer 0 (wider than the shortest
     sequences), pre-softmax mixing in pairs, group norm, vector gate, depth scaling.
Weights are random, drawn by a seeded splitmix64 generator that tests/common/mod.rs repeats:
kernels and mixes are identity plus noise, so that every tap matters without washing the
attention out. For each model it writes, under --out-dir/NAME/: config.json, recipe.json (each
tensor's name, shape, dtype, scale and base: the tests rebuild model.safetensors from it, so no
weights file is committed; --safetensors writes one too) and golden.json {"source", "tolerance_note", "cases": [{"tokens",
"logits": [T][vocab]}]}: the logits of every position of three token sequences (40, 5 and 1
tokens), computed in float64 from the stored (rounded) weights.

Rerun (PyTorch 2.9.1 CPU and safetensors 0.7 were used; any recent version will do):
    pip install torch safetensors
    python3 scripts/mta_golden.py [--out-dir tests/golden/mta]
"""

import argparse
import json
import math
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

MODELS = {
    "a": dict(
        dtype=torch.float32, small_dtype=torch.float32, n_layers=3, dim=64, n_heads=4,
        n_kv_heads=2, hidden=96, vocab=97, context=64, tied=True,
        mta=dict(conv_layers=[1], pre_conv=[3, 5], post_conv=[2, 3], pre_mix=True,
                 post_mix=True, mix_size=4, group_norm=True, gate="scalar", depth_scale=False),
    ),
    "b": dict(
        dtype=torch.bfloat16, small_dtype=torch.float16, n_layers=2, dim=48, n_heads=6,
        n_kv_heads=3, hidden=64, vocab=61, context=64, tied=False,
        mta=dict(conv_layers=[0], pre_conv=[6, 11], post_conv=None, pre_mix=True,
                 post_mix=False, mix_size=2, group_norm=True, gate="vector", depth_scale=True),
    ),
}

ROPE_BASE = 10000.0
RMS_EPS = 1e-5
GROUP_NORM_EPS = 1e-5


MASK64 = (1 << 64) - 1


def uniform(name, seed, n):
    """n values in [-1, 1): splitmix64 seeded by FNV-1a of the tensor's name and the model's
    seed, the top 53 bits of each output. tests/common/mod.rs draws the same numbers to rebuild
    the weights, so that only this recipe is committed, never a weights file."""
    h = 0xCBF29CE484222325
    for byte in name.encode():
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    state = h ^ seed
    out = []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        z ^= z >> 31
        out.append((z >> 11) * 2.0 ** -53 * 2 - 1)
    return out


def random_model(name, m, seed):
    """The recipe of every tensor (name, shape, dtype, scale, base) and the tensors it makes,
    rounded to their stored dtype (through float32, as the Rust side rounds)."""
    dim, hd = m["dim"], m["dim"] // m["n_heads"]
    q_dim, kv_dim = m["n_heads"] * hd, m["n_kv_heads"] * hd
    mta = m["mta"]
    big, small = m["dtype"], m["small_dtype"]
    recipe = []

    def add(tensor, shape, dtype, scale, base="zero"):
        recipe.append({"name": tensor, "shape": list(shape), "dtype": DTYPE_NAMES[dtype],
                       "scale": scale, "base": base})

    add("model.embed_tokens.weight", (m["vocab"], dim), big, 1.0)
    if not m["tied"]:
        add("lm_head.weight", (m["vocab"], dim), big, 0.3)
    add("model.norm.weight", (dim,), small, 0.2, "one")
    for l in range(m["n_layers"]):
        p = f"model.layers.{l}."
        add(p + "input_layernorm.weight", (dim,), small, 0.2, "one")
        add(p + "post_attention_layernorm.weight", (dim,), small, 0.2, "one")
        # Queries scaled up so that attention is far from uniform.
        add(p + "self_attn.q_proj.weight", (q_dim, dim), big, 0.6)
        add(p + "self_attn.k_proj.weight", (kv_dim, dim), big, 0.3)
        add(p + "self_attn.v_proj.weight", (kv_dim, dim), big, 0.3)
        add(p + "self_attn.o_proj.weight", (dim, q_dim), big, 0.3)
        add(p + "mlp.gate_proj.weight", (m["hidden"], dim), big, 0.3)
        add(p + "mlp.up_proj.weight", (m["hidden"], dim), big, 0.3)
        add(p + "mlp.down_proj.weight", (dim, m["hidden"]), big, 0.3)
        a = p + "self_attn.mta."
        for part in ("pre_conv", "post_conv"):
            if mta[part] and l in mta["conv_layers"]:
                cq, ck = mta[part]
                add(a + part, (m["n_heads"], cq, ck), small, 0.3, "identity_conv")
        c = mta["mix_size"]
        for part in ("pre_mix", "post_mix"):
            if mta[part]:
                add(a + part, (m["n_heads"] // c, c, c), small, 0.3, "identity_mix")
        if mta["group_norm"]:
            add(a + "norm", (hd,), small, 0.3, "one")
        if mta["gate"] == "scalar":
            add(a + "gate_weight", (hd,), small, 0.5)
            add(a + "gate_bias", (1,), small, 0.5)
        elif mta["gate"] == "vector":
            add(a + "gate_weight", (hd, hd), small, 0.5)
            add(a + "gate_bias", (hd,), small, 0.5)
    stored = {}
    for r in recipe:
        shape = r["shape"]
        v = torch.tensor(uniform(r["name"], seed, math.prod(shape)), dtype=torch.float64)
        v = (v * r["scale"]).reshape(shape)
        if r["base"] == "one":
            v += 1.0
        elif r["base"] == "identity_conv":
            v[:, shape[1] - 1, (shape[2] - 1) // 2] += 1.0
        elif r["base"] == "identity_mix":
            v += torch.eye(shape[1], dtype=torch.float64)
        dtype = {v: k for k, v in DTYPE_NAMES.items()}[r["dtype"]]
        stored[r["name"]] = v.to(torch.float32).to(dtype).contiguous()
    return recipe, stored


DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def rms_norm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rope(x, n_tokens, head_dim):
    """Hugging Face Llama RoPE: pair i of a head is (x[i], x[i + head_dim / 2])."""
    inv = 1.0 / ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(n_tokens, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.cat([angles, angles], dim=-1)[:, None, :]
    return x * emb.cos() + rotate_half(x) * emb.sin()


def conv_qk(maps, theta):
    """mta.md §2 on [H, T, T] maps with theta [H, c_q, c_k]: zero padding, cross-correlation."""
    cq, ck = theta.shape[1], theta.shape[2]
    pad = (ck - 1) // 2
    x = F.pad(maps[None], (pad, pad, cq - 1, 0))
    return F.conv2d(x, theta[:, None], groups=maps.shape[0])[0]


def mix_heads(maps, w):
    """mta.md §3: head g*c + o <- sum_p w[g, p, o] * head g*c + p."""
    groups, c = w.shape[0], w.shape[1]
    t = maps.shape[-1]
    mixed = torch.einsum("gpo,gpij->goij", w, maps.reshape(groups, c, t, t))
    return mixed.reshape(groups * c, t, t)


def mta_attention(q, k, v, w, mta, layer, prefix):
    """q [T, H, d], k and v [T, H, d] (kv heads repeated), RoPE applied."""
    n_tokens, _, hd = q.shape
    causal = torch.tril(torch.ones(n_tokens, n_tokens, dtype=torch.bool))
    s = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(hd)
    if prefix + "pre_conv" in w:
        s = conv_qk(s.masked_fill(~causal, 0.0), w[prefix + "pre_conv"])
    if prefix + "pre_mix" in w:
        s = mix_heads(s, w[prefix + "pre_mix"])
    p = torch.softmax(s.masked_fill(~causal, float("-inf")), dim=-1)
    if prefix + "post_conv" in w:
        p = conv_qk(p.masked_fill(~causal, 0.0), w[prefix + "post_conv"]).masked_fill(~causal, 0.0)
    if prefix + "post_mix" in w:
        p = mix_heads(p, w[prefix + "post_mix"])
    o = torch.einsum("hij,jhd->ihd", p, v)
    if mta["group_norm"]:
        o = rms_norm(o, w[prefix + "norm"], GROUP_NORM_EPS)
    if mta["gate"] == "scalar":
        z = o @ w[prefix + "gate_weight"] + w[prefix + "gate_bias"]
        o = o * torch.sigmoid(z)[..., None]
    elif mta["gate"] == "vector":
        o = o * torch.sigmoid(o @ w[prefix + "gate_weight"].T + w[prefix + "gate_bias"])
    if mta["depth_scale"]:
        o = o * (1 - (0.8 - 0.6 * math.exp(-0.3 * layer)))
    return o.reshape(n_tokens, -1)


def forward(m, w, tokens):
    """Logits [T, vocab] of every position."""
    dim, n_heads, n_kv = m["dim"], m["n_heads"], m["n_kv_heads"]
    hd = dim // n_heads
    n = len(tokens)
    x = w["model.embed_tokens.weight"][torch.tensor(tokens)]
    for l in range(m["n_layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], RMS_EPS)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(n, n_heads, hd)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(n, n_kv, hd)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(n, n_kv, hd)
        q, k = rope(q, n, hd), rope(k, n, hd)
        repeat = n_heads // n_kv
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        att = mta_attention(q, k, v, w, m["mta"], l, p + "self_attn.mta.")
        x = x + att @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], RMS_EPS)
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], RMS_EPS)
    head = w["model.embed_tokens.weight"] if m["tied"] else w["lm_head.weight"]
    return x @ head.T


def config_json(m):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": m["dim"],
        "intermediate_size": m["hidden"],
        "num_attention_heads": m["n_heads"],
        "num_key_value_heads": m["n_kv_heads"],
        "num_hidden_layers": m["n_layers"],
        "vocab_size": m["vocab"],
        "max_position_embeddings": m["context"],
        "rope_theta": ROPE_BASE,
        "rms_norm_eps": RMS_EPS,
        "tie_word_embeddings": m["tied"],
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "mta": m["mta"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default="tests/golden/mta")
    ap.add_argument("--safetensors", action="store_true",
                    help="also write model.safetensors (the tests rebuild it from recipe.json)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    for seed, (name, m) in enumerate(MODELS.items()):
        out = pathlib.Path(args.out_dir) / name
        out.mkdir(parents=True, exist_ok=True)
        recipe, stored = random_model(name, m, 1000 + seed)
        (out / "recipe.json").write_text(json.dumps({"seed": 1000 + seed, "tensors": recipe}, indent=1) + "\n")
        if args.safetensors:
            save_file(stored, out / "model.safetensors")
        (out / "config.json").write_text(json.dumps(config_json(m), indent=2) + "\n")
        w = {k: v.to(torch.float64) for k, v in stored.items()}
        g = torch.Generator().manual_seed(2000 + seed)
        cases = []
        for length in (40, 5, 1):
            tokens = torch.randint(0, m["vocab"], (length,), generator=g).tolist()
            with torch.no_grad():
                logits = forward(m, w, tokens)
            cases.append({
                "tokens": tokens,
                "logits": [[float(f"{x:.7g}") for x in row] for row in logits.tolist()],
            })
        golden = {
            "source": f"scripts/mta_golden.py (PyTorch {torch.__version__}, CPU, float64)",
            "tolerance_note": "float64 from the stored weights; sinkstar computes in f32",
            "cases": cases,
        }
        (out / "golden.json").write_text(json.dumps(golden) + "\n")
        print(f"mta_golden: {out}: {len(stored)} tensors, {len(cases)} cases")


if __name__ == "__main__":
    main()
