#!/usr/bin/env python3
"""Pass-key retrieval, dense vs Star Attention, by `sinkstar ask --json` (star.md §6).

Builds a needle-in-a-haystack set locally: for each document length L (in tokens) and each
depth, a stretch of Jane Austen's "Emma" (scripts/fetch-text.sh; a different stretch per
sample, chosen by a seeded generator) with a five-digit pass key hidden at that depth of it:

    ... The pass key is 48213. Remember it. 48213 is the pass key. ...

and asks "What is the pass key? Answer with the number only." Every configuration reads every
document (greedy, at most 16 answer tokens); an answer is right when it contains the key.

    dense       exact causal attention over the whole document
    star-L/4    Star Attention, blocks of L/4, anchor = block (the paper's setting)
    star-512    blocks of 512, anchor = block
    star-noanchor  blocks of L/4 without an anchor: each block encoded alone (what the
                anchor buys, the paper's Table 3)

Writes every answer to --out-dir/passkey/results.jsonl (with --resume, answers already there
are kept), the accuracy and document-reading-time tables as markdown, one CSV per
configuration (length, mean seconds to read the document) and the plot passkey_prefill.png.
Times are those of one machine: compare configurations within one run.

Smoke test (a few minutes on lavapipe):
    python3 scripts/passkey.py --lengths 1000 --depths 0.5
The README's tables:
    python3 scripts/passkey.py [--lengths 1000,2000,4000,8000] [--depths 0.1,0.3,0.5,0.7,0.9]
"""

import argparse
import json
import os
import pathlib
import random
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

QUESTION = "What is the pass key? Answer with the number only."
# Characters per token of Emma's prose under SmolLM2's tokenizer (measured on a stretch: the
# whole file's 883,028 / 221,850 = 3.98 counts its chapter headings and blank lines).
CHARS_PER_TOKEN = 3.7
# Tokens of a prompt that are not the document's text: chat template, needle, question.
OVERHEAD_TOKENS = 64
CONFIGS = ["dense", "star-L/4", "star-512", "star-noanchor"]

# star.md §6. Table 1: RULER accuracy of global attention (Ring) and Star's relative change,
# blocks of L/4 (Llama-3.1-8B-Instruct, repository README). Table 3: RULER-NIAH, 8B, global
# vs no anchor.
PAPER_TABLE1 = "Llama-3.1-8B-Instruct, RULER, b = L/4: 16K 92.22 → −0.94%, 32K 87.53 → +1.17%, " \
               "64K 84.79 → −1.42%, 128K 76.31 → −1.90%; speedups 1.1× / 1.2× / 1.8× / 2.7×"
PAPER_TABLE3 = "Llama-3.1-8B-Instruct, RULER-NIAH at 64K / 128K: global attention 99.50 / 98.49, " \
               "Star with the anchor 97.61 / 97.54, without an anchor 60.11 / 73.75"


def sinkstar_bin(args):
    if args.bin:
        return args.bin
    subprocess.run(["cargo", "build", "--quiet", "--bin", "sinkstar"], cwd=ROOT, check=True)
    return str(ROOT / "target" / "debug" / "sinkstar")


def haystack(text, length, depth, seed):
    """A stretch of about `length` tokens of `text` from a seeded offset, starting and ending
    at paragraph breaks, with the needle at the paragraph break nearest `depth`; and the key."""
    rng = random.Random(seed)
    key = rng.randrange(10000, 100000)
    n_chars = int((length - OVERHEAD_TOKENS) * CHARS_PER_TOKEN)
    start = rng.randrange(0, len(text) - n_chars - 1)
    start = text.find("\n\n", start) + 2
    body = text[start:start + n_chars]
    body = body[:body.rfind("\n\n")] if "\n\n" in body else body
    at = body.find("\n\n", int(len(body) * depth))
    at = len(body) if at < 0 else at
    needle = f"\n\nThe pass key is {key}. Remember it. {key} is the pass key."
    return body[:at] + needle + body[at:], key


def flags(config, length):
    quarter = str(max(1, length // 4))
    return {
        "dense": ["--doc-attention", "dense"],
        "star-L/4": ["--block", quarter, "--anchor", quarter],
        "star-512": ["--block", "512", "--anchor", "512"],
        "star-noanchor": ["--block", quarter, "--anchor", "0"],
    }[config]


def main():
    home = pathlib.Path(os.environ.get("SINKSTAR_HOME", os.path.expanduser("~/.cache/sinkstar")))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", type=pathlib.Path, default=home / "texts" / "emma.txt")
    p.add_argument("--lengths", default="1000,2000,4000,8000")
    p.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--out-dir", type=pathlib.Path, default=ROOT / "target" / "figures")
    p.add_argument("--model", help="GGUF model [default: sinkstar's]")
    p.add_argument("--bin", help="sinkstar binary [default: cargo build's]")
    p.add_argument("--resume", action="store_true", help="keep answers already in --out-dir")
    args = p.parse_args()
    if not args.text.exists():
        raise SystemExit(f"passkey: no {args.text}: run scripts/fetch-text.sh")
    text = args.text.read_text()
    lengths = [int(x) for x in args.lengths.split(",")]
    depths = [float(x) for x in args.depths.split(",")]
    configs = args.configs.split(",")
    if set(configs) - set(CONFIGS):
        raise SystemExit(f"passkey: unknown configurations {sorted(set(configs) - set(CONFIGS))}")
    run_dir = args.out_dir / "passkey"
    run_dir.mkdir(parents=True, exist_ok=True)
    results_path = run_dir / "results.jsonl"
    done = {}
    if args.resume and results_path.exists():
        for line in results_path.read_text().splitlines():
            r = json.loads(line)
            done[(r["config"], r["length"], r["depth"])] = r
    exe = sinkstar_bin(args)
    env = dict(os.environ, WGPU_BACKEND=os.environ.get("WGPU_BACKEND", "vulkan"))
    with open(results_path, "a" if args.resume else "w") as out:
        for length in lengths:
            for depth in depths:
                doc, key = haystack(text, length, depth, seed=length * 1000 + int(depth * 100))
                doc_path = run_dir / f"doc-{length}-{int(depth * 100)}.txt"
                doc_path.write_text(doc)
                for config in configs:
                    if (config, length, depth) in done:
                        continue
                    cmd = [exe] + (["--model", args.model] if args.model else [])
                    cmd += ["ask", "--doc", str(doc_path), "--json", "--max-tokens", "16",
                            *flags(config, length), QUESTION]
                    print(f"passkey: {config} L={length} depth={depth}", file=sys.stderr)
                    run = subprocess.run(cmd, cwd=ROOT, env=env, check=True,
                                         stdout=subprocess.PIPE, text=True)
                    answer = json.loads(run.stdout.strip().splitlines()[-1])
                    r = {"config": config, "length": length, "depth": depth, "key": key,
                         "correct": str(key) in answer["text"], "text": answer["text"],
                         "documentTokens": answer["documentTokens"],
                         "attention": answer["attention"], "blocks": answer["blocks"],
                         "documentSecs": answer["documentSecs"], "adapter": answer["adapter"]}
                    print(f"passkey: {'right' if r['correct'] else 'wrong'}: "
                          f"{answer['text']!r} (key {key}), read in "
                          f"{answer['documentSecs']:.1f}s", file=sys.stderr)
                    out.write(json.dumps(r) + "\n")
                    out.flush()
                    done[(config, length, depth)] = r

    rows = [r for r in done.values() if r["length"] in lengths and r["depth"] in depths
            and r["config"] in configs]
    adapter = next((r["adapter"] for r in rows), "?")

    def cell(config, length, f):
        rs = [r for r in rows if r["config"] == config and r["length"] == length]
        return f(rs) if rs else "–"

    def accuracy(rs):
        return f"{100 * sum(r['correct'] for r in rs) / len(rs):.0f}% ({len(rs)})"

    def secs(rs):
        return f"{sum(r['documentSecs'] for r in rs) / len(rs):.1f}"

    def tokens(rs):
        return f"{sum(r['documentTokens'] for r in rs) / len(rs):,.0f}"

    header = "| | " + " | ".join(f"L = {length:,}" for length in lengths) + " |"
    rule = "| --- |" + " ---: |" * len(lengths)
    print(f"SmolLM2-135M-Instruct (Q4_1), pass key at depths {depths} of a stretch of "
          f"{args.text.name}, greedy; adapter: {adapter}\n")
    print("Accuracy (samples):\n")
    print(header + "\n" + rule)
    print("| document tokens | " + " | ".join(cell("dense", n, tokens) for n in lengths) + " |")
    for config in configs:
        print(f"| {config} | " + " | ".join(cell(config, n, accuracy) for n in lengths) + " |")
    print("\nSeconds to read the document (mean):\n")
    print(header + "\n" + rule)
    for config in configs:
        print(f"| {config} | " + " | ".join(cell(config, n, secs) for n in lengths) + " |")
    print(f"\nPaper (star.md §6): {PAPER_TABLE1}. {PAPER_TABLE3}.")

    csvs = []
    for config in configs:
        points = []
        for length in lengths:
            rs = [r for r in rows if r["config"] == config and r["length"] == length]
            if rs:
                mean_tokens = sum(r["documentTokens"] for r in rs) / len(rs)
                points.append((mean_tokens, sum(r["documentSecs"] for r in rs) / len(rs)))
        if points:
            path = run_dir / f"{config.replace('/', '-')}.csv"
            path.write_text("document_tokens,seconds\n"
                            + "".join(f"{x:.0f},{y:.3f}\n" for x, y in points))
            csvs.append(str(path))
    plot = args.out_dir / "passkey_prefill.png"
    subprocess.run([exe, "plot", "--out", str(plot), "--x", "document_tokens", "--y", "seconds",
                    "--linear-y", "--markers",
                    "--title", f"Reading a document: dense vs Star Attention ({adapter})",
                    "--x-label", "document tokens", "--y-label", "seconds", *csvs],
                   cwd=ROOT, check=True)
    print(f"\nplot: {plot}")


if __name__ == "__main__":
    main()
