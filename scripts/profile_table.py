#!/usr/bin/env python3
"""The README's decode profile table from several `sinkstar bench --json` results.

Each JSON's `decode_profile` times every part of a decode step alone (all layers); on a shared
machine a part's time swings between runs, so the table gives each part's fastest and slowest
time over the runs given, and its share of the sum of the fastest.

Usage: python3 scripts/profile_table.py RESULT.json [RESULT.json ...]
"""

import json
import sys


def main():
    paths = sys.argv[1:]
    if not paths:
        sys.exit(__doc__)
    runs = [json.load(open(path)) for path in paths]
    parts = [p["part"] for p in runs[0]["decode_profile"]]
    for path, run in zip(paths, runs):
        if [p["part"] for p in run["decode_profile"]] != parts:
            sys.exit(f"{path}: other decode parts than {paths[0]}")
    times = {part: [run["decode_profile"][i]["secs"] * 1e3 for run in runs]
             for i, part in enumerate(parts)}
    total = sum(min(t) for t in times.values())
    print(f"| part of a decode step ({runs[0]['device']}, {len(runs)} runs) "
          "| ms, fastest | ms, slowest | share |")
    print("| --- | ---: | ---: | ---: |")
    for part in sorted(parts, key=lambda p: -min(times[p])):
        t = times[part]
        print(f"| {part} | {min(t):.1f} | {max(t):.1f} | {100 * min(t) / total:.0f}% |")


if __name__ == "__main__":
    main()
