#!/usr/bin/env python3
"""The toy task of the Multi-Token Attention paper, trained at a size this machine can train.

Task (mta.md §9, Golovneva et al. §3): a sequence of blocks of N distinct random letters, each
block followed by "."; then "?", L query letters drawn from one block, "="; the answer is that
whole block, the only one that holds all L letters. A standard Transformer must find a block
from the letters one at a time, which single-token attention does badly; with a pre-softmax
key-query convolution one attention weight sees several neighbouring queries and keys.

Trains two Llama-style models that differ only there: a standard Transformer, and the same
with a pre-softmax key-query convolution of c_q x c_k taps in every layer (identity-initialised,
so it starts as the standard model), on the same stream of puzzles with the same seed, for the
same number of steps; reports each one's error rate (a puzzle is wrong unless all N answer
tokens are, greedily) on a held-out test set, from PyTorch; exports both as Hugging Face-style
directories (config.json + model.safetensors) that sinkstar loads (`sinkstar mta-toy`), and
writes the test set.

Default size (8.6 min for the standard model, 16.8 for MTA, on 2 CPU cores): 10 blocks of N = 5 letters out of
26, L = 2, 4 layers, 2 heads, width 64, SwiGLU 128, c_q = 2, c_k = 9 (the paper's toy kernel),
AdamW at lr 1e-3, batch 64. The paper's: 4 layers, 2 heads, width 256, sequences of 321
tokens, 100K steps at lr 1e-4 on 1M samples.

    pip install torch safetensors
    python3 scripts/mta_toy.py [--steps 6000] [--out-dir ~/.cache/sinkstar/mta-toy]
Writes OUT/standard/, OUT/mta/ (the models), OUT/test.jsonl (one puzzle per line: prompt
tokens and answer tokens) and OUT/train.json (settings, losses, training times, PyTorch's
error rates).
"""

import argparse
import json
import math
import os
import pathlib
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

# Tokens: "." ends a block, "?" starts the query, "=" the answer; letters after them.
DOT, QUERY, ANSWER = 0, 1, 2
N_SPECIAL = 3
ROPE_BASE = 10000.0
EPS = 1e-5


def puzzle(rng, n_blocks, n_letters, alphabet, n_query):
    """(prompt, answer): exactly one block holds every query letter."""
    letters = list(range(N_SPECIAL, N_SPECIAL + alphabet))
    while True:
        blocks = [rng.sample(letters, n_letters) for _ in range(n_blocks)]
        target = rng.randrange(n_blocks)
        query = rng.sample(blocks[target], n_query)
        if sum(all(q in b for q in query) for b in blocks) == 1:
            break
    prompt = [t for b in blocks for t in b + [DOT]] + [QUERY] + query + [ANSWER]
    return prompt, blocks[target]


class Layer(nn.Module):
    def __init__(self, dim, n_heads, hidden, conv):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.attn_norm = nn.Parameter(torch.ones(dim))
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.ffn_norm = nn.Parameter(torch.ones(dim))
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.conv = None
        if conv:
            cq, ck = conv
            theta = torch.zeros(n_heads, cq, ck)
            theta[:, cq - 1, (ck - 1) // 2] = 1.0  # identity (mta.md §6)
            self.conv = nn.Parameter(theta)

    def attention(self, x, cos, sin):
        b, t, _ = x.shape
        h, d = self.n_heads, self.head_dim
        q, k, v = (f(x).view(b, t, h, d).transpose(1, 2) for f in (self.q, self.k, self.v))
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        s = q @ k.transpose(-1, -2) / math.sqrt(d)
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        if self.conv is not None:
            # Pre-softmax key-query convolution with the double mask (mta.md §2).
            cq, ck = self.conv.shape[1:]
            pad = (ck - 1) // 2
            s = F.pad(s.masked_fill(~causal, 0.0), (pad, pad, cq - 1, 0))
            s = F.conv2d(s, self.conv[:, None], groups=h)
        p = torch.softmax(s.masked_fill(~causal, float("-inf")), dim=-1)
        return self.o((p @ v).transpose(1, 2).reshape(b, t, h * d))

    def forward(self, x, cos, sin):
        x = x + self.attention(rms_norm(x, self.attn_norm), cos, sin)
        h = rms_norm(x, self.ffn_norm)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Model(nn.Module):
    def __init__(self, vocab, dim, n_layers, n_heads, hidden, conv):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(Layer(dim, n_heads, hidden, conv) for _ in range(n_layers))
        self.norm = nn.Parameter(torch.ones(dim))
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head_dim = dim // n_heads

    def forward(self, tokens):
        t = tokens.shape[1]
        inv = 1.0 / ROPE_BASE ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim)
        angles = torch.arange(t).float()[:, None] * inv[None, :]
        emb = torch.cat([angles, angles], dim=-1)
        cos, sin = emb.cos(), emb.sin()
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.head(rms_norm(x, self.norm))


def rms_norm(x, w):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + EPS) * w


def rope(x, cos, sin):
    """Hugging Face's rotate-half RoPE (sinkstar interleaves the rows on load)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def batch(rng, size, task):
    prompts, answers = zip(*(puzzle(rng, **task) for _ in range(size)))
    return torch.tensor(prompts), torch.tensor(answers)


@torch.no_grad()
def error_rate(model, prompts, answers):
    """Greedy answers of every test puzzle; a puzzle is wrong unless all its tokens are."""
    model.eval()
    seq = prompts
    for _ in range(answers.shape[1]):
        nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    model.train()
    wrong = (seq[:, prompts.shape[1]:] != answers).any(dim=1)
    return wrong.float().mean().item()


def export(model, conv, args, vocab, out):
    """A Hugging Face-style directory: config.json with the `mta` object src/model/hf.rs reads."""
    out.mkdir(parents=True, exist_ok=True)
    t = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm,
         "lm_head.weight": model.head.weight}
    for l, layer in enumerate(model.layers):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = layer.attn_norm
        t[p + "post_attention_layernorm.weight"] = layer.ffn_norm
        for name, lin in (("q_proj", layer.q), ("k_proj", layer.k), ("v_proj", layer.v),
                          ("o_proj", layer.o)):
            t[p + f"self_attn.{name}.weight"] = lin.weight
        for name, lin in (("gate_proj", layer.gate), ("up_proj", layer.up),
                          ("down_proj", layer.down)):
            t[p + f"mlp.{name}.weight"] = lin.weight
        if layer.conv is not None:
            t[p + "self_attn.mta.pre_conv"] = layer.conv
    save_file({k: v.detach().float().contiguous() for k, v in t.items()}, out / "model.safetensors")
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": args.dim, "intermediate_size": args.hidden,
        "num_attention_heads": args.heads, "num_key_value_heads": args.heads,
        "num_hidden_layers": args.layers, "vocab_size": vocab,
        "max_position_embeddings": 256, "rope_theta": ROPE_BASE, "rms_norm_eps": EPS,
        "tie_word_embeddings": False, "hidden_act": "silu", "eos_token_id": ANSWER,
    }
    if conv:
        config["mta"] = {
            "conv_layers": list(range(args.layers)), "pre_conv": list(conv), "post_conv": None,
            "pre_mix": False, "post_mix": False, "mix_size": 1, "group_norm": False,
            "gate": "none", "depth_scale": False,
        }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=os.path.expanduser("~/.cache/sinkstar/mta-toy"))
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--letters", type=int, default=5, help="N, letters per block")
    ap.add_argument("--alphabet", type=int, default=26)
    ap.add_argument("--query", type=int, default=2, help="L, query letters")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--conv", default="2,9", help="c_q,c_k of the MTA model's convolution")
    ap.add_argument("--test", type=int, default=1000, help="held-out puzzles")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["standard", "mta"], help="train one model")
    ap.add_argument("--threads", type=int, default=2,
                    help="PyTorch threads (1 beside another busy process: spinning threads collide)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = dict(n_blocks=args.blocks, n_letters=args.letters, alphabet=args.alphabet,
                n_query=args.query)
    vocab = N_SPECIAL + args.alphabet
    # The test set comes from its own seed: its puzzles are (almost surely) never trained on.
    test_rng = random.Random(10_000 + args.seed)
    test_prompts, test_answers = batch(test_rng, args.test, task)
    with open(out / "test.jsonl", "w") as f:
        for p, a in zip(test_prompts.tolist(), test_answers.tolist()):
            f.write(json.dumps({"prompt": p, "answer": a}) + "\n")
    summary_path = out / "train.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["settings"] = vars(args) | {"vocab": vocab, "sequence": len(test_prompts[0]) + args.letters}
    conv = tuple(int(x) for x in args.conv.split(","))
    for name, model_conv in (("standard", None), ("mta", conv)):
        if args.only and args.only != name:
            continue
        torch.manual_seed(args.seed)
        rng = random.Random(args.seed)
        model = Model(vocab, args.dim, args.layers, args.heads, args.hidden, model_conv)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
        start = time.time()
        losses = []
        for step in range(1, args.steps + 1):
            prompts, answers = batch(rng, args.batch, task)
            seq = torch.cat([prompts, answers], dim=1)
            logits = model(seq[:, :-1])[:, prompts.shape[1] - 1:]
            loss = F.cross_entropy(logits.reshape(-1, vocab), answers.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            # Warm-up then cosine decay: small models on a fixed budget.
            frac = step / args.steps
            for g in opt.param_groups:
                g["lr"] = args.lr * min(1.0, step / 200) * 0.5 * (1 + math.cos(math.pi * frac))
            if step % 100 == 0:
                losses.append([step, round(loss.item(), 5)])
                print(f"mta_toy: {name} step {step}/{args.steps} loss {loss.item():.4f} "
                      f"({time.time() - start:.0f} s)", flush=True)
        minutes = (time.time() - start) / 60
        error = error_rate(model, test_prompts, test_answers)
        print(f"mta_toy: {name}: {minutes:.1f} min, test error {100 * error:.1f}%", flush=True)
        export(model, model_conv, args, vocab, out / name)
        summary[name] = {"train_minutes": round(minutes, 2), "pytorch_test_error": error,
                         "losses": losses, "parameters": sum(p.numel() for p in model.parameters())}
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
