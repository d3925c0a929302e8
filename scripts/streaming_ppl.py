#!/usr/bin/env python3
"""StreamingLLM's perplexity table and Figure 3 on sinkstar's model, by `sinkstar ppl`.

Streams one long text (default: Jane Austen's "Emma", scripts/fetch-text.sh) through one
session per attention policy, scoring every token as StreamingLLM's eval_long_ppl.py does
(sink-window spec section 8), for a cache budget L (--budget):

    dense      all tokens, true positions, until the model's context (8192) is full: it stops there
    window     the last L tokens (S = 0, W = L)
    recompute  every token re-encodes the last L tokens from scratch: the slow "oracle"
    sink S     S sinks + the last L - S tokens, for each S in --sinks (default 0,1,2,4,8)

Recompute costs a pass over L tokens per scored token (about L / 60 s each on an idle lavapipe),
so it scores only the last --recompute-tokens of the --tokens (`sinkstar ppl --start`: it sees
only its window, so nothing before that needs scoring), and the table also gives every run's PPL
over that same stretch, and over the tokens dense scored before its context was full. Writes
one CSV per run (tokens_seen,nll,running_ppl,gpu_bytes) and the overlay plot streaming_ppl.png
into --out-dir, and prints the markdown table with the paper's figures (spec section 9) beside
ours. The paper's models, text, lengths and budgets differ from ours: compare the shape, not the
values.

Needs the model (scripts/fetch-model.sh), the text (scripts/fetch-text.sh) and a Vulkan adapter
(lavapipe will do). With --resume, runs whose result file (.out) is already in --out-dir are not
run again: the README's runs are committed in docs/results/streaming_ppl/, so the table and plot
are rebuilt from them in seconds, and a new run (another --budget, say) adds to them. On this
2-core machine each 20,000-token ring run took about 10 minutes, dense (to 8192 tokens) about
25, recompute about 5 s per scored token. Smoke test:
    python3 scripts/streaming_ppl.py --tokens 300 --budget 64 --recompute-tokens 20 --out-dir /tmp/s
The README's table:
    python3 scripts/streaming_ppl.py --tokens 20000 --budget 256 --recompute-tokens 200 \
        --out-dir docs/results --resume
"""

import argparse
import csv
import math
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# StreamingLLM (Xiao et al., ICLR 2024), PG19. Table 1: Llama-2-13B, first book (65K tokens),
# cache 1024 (4+1020 for StreamingLLM). Table 2: 400K concatenated tokens, S+W with
# S = 0/1/2/4/8 at cache 4096 (Llama-2-7B) or 2048 (the others); S = 0 is window attention.
TABLE1 = {"dense": 5641, "window": 5158.07, "recompute": 5.43, ("sink", 4): 5.40}
TABLE2 = {
    "Llama-2-7B": [3359.95, 11.88, 10.51, 9.59, 9.54],
    "Falcon-7B": [17.90, 12.12, 12.12, 12.12, 12.12],
    "MPT-7B": [460.29, 14.99, 15.00, 14.99, 14.98],
    "Pythia-12B": [21.62, 11.95, 12.09, 12.09, 12.02],
}
TABLE2_SINKS = [0, 1, 2, 4, 8]
POLICIES = ["dense", "window", "recompute", "sink"]


def sinkstar_bin(args):
    if args.bin:
        return args.bin
    subprocess.run(["cargo", "build", "--quiet", "--bin", "sinkstar"], cwd=ROOT, check=True)
    return str(ROOT / "target" / "debug" / "sinkstar")


def run_ppl(args, exe, name, policy_args, start, tokens, out_dir):
    """Runs one `sinkstar ppl`; returns its summary line (also kept in NAME.out)."""
    csv_path = out_dir / f"{name}.csv"
    out_path = out_dir / f"{name}.out"
    if args.resume and out_path.exists() and csv_path.exists():
        print(f"streaming_ppl: {name}: kept from an earlier run", file=sys.stderr)
        return out_path.read_text().strip()
    cmd = [exe]
    if args.model:
        cmd += ["--model", args.model]
    cmd += ["ppl", str(args.text), *policy_args, "--start", str(start), "--tokens", str(tokens),
            "--chunk", str(args.chunk), "--csv", str(csv_path)]
    print("streaming_ppl: " + " ".join(cmd), file=sys.stderr)
    env = dict(os.environ, WGPU_BACKEND=os.environ.get("WGPU_BACKEND", "vulkan"))
    done = subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.PIPE, text=True)
    line = done.stdout.strip().splitlines()[-1]
    print(f"streaming_ppl: {line}", file=sys.stderr)
    out_path.write_text(line + "\n")
    return line


def parse(line):
    m = re.search(r"(\d+) tokens scored, PPL (\S+)", line)
    if not m:
        raise SystemExit(f"streaming_ppl: cannot read the result line: {line!r}")
    return int(m.group(1)), float(m.group(2)), "context full" in line


def stretch_ppl(csv_path, r0, r1):
    """PPL over the tokens scored with r0 < tokens_seen <= r1; None unless all were scored."""
    nlls = []
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            if r0 < int(row["tokens_seen"]) <= r1:
                nlls.append(float(row["nll"]))
    if len(nlls) < r1 - r0 or not nlls:
        return None
    return math.exp(sum(nlls) / len(nlls))


def fmt(x):
    if x is None:
        return "–"
    return f"{x:,.0f}" if x >= 1000 else f"{x:.2f}"


def main():
    home = pathlib.Path(os.environ.get("SINKSTAR_HOME", os.path.expanduser("~/.cache/sinkstar")))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", type=pathlib.Path, default=home / "texts" / "emma.txt")
    p.add_argument("--tokens", type=int, default=20000, help="tokens scored per run")
    p.add_argument("--recompute-tokens", type=int, default=500,
                   help="the last tokens of --tokens that recompute scores (each costs a pass "
                        "over --budget tokens: about 7 s at 256 on lavapipe)")
    p.add_argument("--budget", type=int, default=256, help="cache budget L = S + W")
    p.add_argument("--sinks", default="0,1,2,4,8", help="S values of the sink runs")
    p.add_argument("--only", default=",".join(POLICIES),
                   help="policies to run, of " + ",".join(POLICIES))
    p.add_argument("--chunk", type=int, default=64, help="tokens per submission (same logits)")
    p.add_argument("--out-dir", type=pathlib.Path, default=ROOT / "target" / "figures")
    p.add_argument("--model", help="GGUF model [default: sinkstar's]")
    p.add_argument("--bin", help="sinkstar binary [default: cargo build's]")
    p.add_argument("--resume", action="store_true", help="keep runs already in --out-dir")
    args = p.parse_args()
    if not args.text.exists():
        raise SystemExit(f"streaming_ppl: no {args.text}: run scripts/fetch-text.sh")
    sinks = [int(s) for s in args.sinks.split(",") if s]
    only = set(args.only.split(","))
    if only - set(POLICIES):
        raise SystemExit(f"streaming_ppl: unknown policies {sorted(only - set(POLICIES))}")
    if any(s >= args.budget for s in sinks):
        raise SystemExit("streaming_ppl: every S must leave a window: S < --budget")
    L = args.budget
    run_dir = args.out_dir / "streaming_ppl"
    run_dir.mkdir(parents=True, exist_ok=True)
    exe = sinkstar_bin(args)

    # The stretch recompute scores: text indices r0+1 ..= r1.
    recompute_tokens = min(args.recompute_tokens, args.tokens)
    r0, r1 = args.tokens - recompute_tokens, args.tokens
    # (policy, S, W, file name, sinkstar flags, unscored tokens first, tokens to score)
    runs = []
    if "dense" in only:
        runs.append(("dense", None, None, "dense", ["--attention", "dense"], 0, args.tokens))
    if "window" in only:
        runs.append(("window", 0, L, f"window-0+{L}",
                     ["--attention", "window", "--window", str(L)], 0, args.tokens))
    if "recompute" in only:
        runs.append(("recompute", None, L, f"recompute-{L}",
                     ["--attention", "recompute", "--window", str(L)], r0, recompute_tokens))
    if "sink" in only:
        for s in sinks:
            # S = 0 is the window policy itself (the same cache, slot for slot): one run serves
            # both rows when both are asked for.
            name = f"window-0+{L}" if s == 0 and "window" in only else f"sink-{s}+{L - s}"
            runs.append(("sink", s, L - s, name,
                         ["--attention", "sink", "--sinks", str(s), "--window", str(L - s)],
                         0, args.tokens))

    rows, done = [], {}
    for policy, s, w, name, flags, start, tokens in runs:
        if name not in done:
            done[name] = parse(run_ppl(args, exe, name, flags, start, tokens, run_dir))
        n, ppl, full = done[name]
        stretch = stretch_ppl(run_dir / f"{name}.csv", r0, r1)
        rows.append((policy, s, w, name, n, ppl, full, stretch))

    # Dense stops at the model's context: every run's PPL over the tokens dense scored too, so
    # that dense is compared on the same stretch.
    dense_n = next((n for policy, _, _, _, n, _, _, _ in rows if policy == "dense"), None)
    firsts = [stretch_ppl(run_dir / f"{name}.csv", 0, dense_n) if dense_n else None
              for _, _, _, name, *_ in rows]

    csvs = [str(run_dir / f"{name}.csv") for name in done]
    plot = args.out_dir / "streaming_ppl.png"
    subprocess.run([exe, "plot", "--out", str(plot),
                    "--title", f"Streaming perplexity, {args.text.name}, cache budget {L}",
                    "--x-label", "tokens seen", "--y-label", "running perplexity (log scale)",
                    *csvs], cwd=ROOT, check=True)

    print(f"SmolLM2-135M-Instruct (Q4_1 weights, f32 activations and KV cache), {args.text.name}, "
          f"cache budget L = {L}, up to {args.tokens} tokens scored from the start of the text; "
          f"recompute scores tokens {r0 + 1}..{r1} only; plot: {plot}\n")
    paper = ["Llama-2-13B T1"] + [f"{m} T2" for m in TABLE2]
    first_head = f" PPL, tokens 1..{dense_n} (ours) |" if dense_n else ""
    print(f"| policy | S | W | tokens scored | PPL (ours) |{first_head} PPL, tokens {r0 + 1}..{r1} "
          "(ours) | ‖ | " + " | ".join(paper) + " |")
    print("| --- | ---: | ---: | ---: | ---: |" + (" ---: |" if dense_n else "")
          + " ---: | --- |" + " ---: |" * len(paper))
    for (policy, s, w, name, n, ppl, full, stretch), first in zip(rows, firsts):
        t1 = TABLE1.get((policy, s)) if policy == "sink" else TABLE1.get(policy)
        t2_index = TABLE2_SINKS.index(s) if policy in ("sink", "window") and s in TABLE2_SINKS else None
        t2 = [TABLE2[m][t2_index] if t2_index is not None else None for m in TABLE2]
        w_text = "all (true positions)" if w is None else str(w)
        tokens = f"{n} (context full)" if full else str(n)
        cells = [policy, "–" if s is None else str(s), w_text, tokens, fmt(ppl)]
        cells += [fmt(first)] if dense_n else []
        cells += [fmt(stretch), ""]
        cells += [fmt(x) for x in [t1, *t2]]
        print("| " + " | ".join(cells) + " |")
    print("\nRight of ‖: the StreamingLLM paper's figures (Xiao et al., ICLR 2024) on PG19: T1 = "
          "Table 1, Llama-2-13B, 65K tokens, cache 1024 (4+1020); T2 = Table 2, 400K tokens, "
          "S + W = 4096 (Llama-2-7B) or 2048 (Falcon-7B, MPT-7B, Pythia-12B); their window row is "
          "S = 0. Other models, text, lengths and budgets: compare the shape, not the values.")


if __name__ == "__main__":
    main()
