#!/usr/bin/env python3
"""Plots decode tok/s against the GPU expert cache's size from `ktrun --bench`
outputs (one run per size, concatenated): the measured speed, and the speed
predicted if the cache removes its share of the CPU experts' time and nothing
else: the run without a cache, less share x (CPU expert bytes per token /
host read bandwidth), both as that run measured them.

usage: plot_expert_cache_curve.py BENCH_OUTPUT.txt PLOT.png [TITLE]
"""
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_runs(path):
    runs = []
    for line in open(path):
        if line.startswith("prefill:"):
            runs.append({"gib": 0.0, "share": 0.0})
        elif not runs:
            continue
        elif m := re.match(r"decode: \d+ tokens in [\d.]+ s, ([\d.]+) tok/s", line):
            runs[-1]["tok_s"] = float(m.group(1))
        elif m := re.match(r"decode CPU expert weights: ([\d.]+) MB per token.*bandwidth ([\d.]+) GB/s",
                           line):
            runs[-1]["cpu_seconds"] = float(m.group(1)) * 1e6 / (float(m.group(2)) * 1e9)
        elif m := re.match(r"GPU expert cache: \d+ experts, ([\d.]+) GiB.*?decode: ([\d.]+)%", line):
            runs[-1]["gib"] = float(m.group(1))
            runs[-1]["share"] = float(m.group(2)) / 100
    return [r for r in runs if "tok_s" in r]


def main():
    runs = sorted(read_runs(sys.argv[1]), key=lambda r: r["gib"])
    base = next((r for r in runs if r["gib"] == 0), runs[0])

    def predicted(run):
        return 1 / (1 / base["tok_s"] - run["share"] * base["cpu_seconds"])

    sizes = [r["gib"] for r in runs]
    plt.figure(figsize=(6.4, 4.2))
    plt.plot(sizes, [r["tok_s"] for r in runs], "o-", label="measured")
    plt.plot(sizes, [predicted(r) for r in runs], "s--",
             label="predicted: share of the CPU expert time removed")
    for r in runs:
        plt.annotate(f"{100 * r['share']:.0f}%", (r["gib"], r["tok_s"]),
                     textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
    plt.xlabel("GPU expert cache (GiB)")
    plt.ylabel("decode tok/s")
    plt.title(sys.argv[3] if len(sys.argv) > 3 else "Decode speed against the expert cache")
    plt.grid(alpha=0.3)
    plt.legend()
    plt.tight_layout()
    plt.savefig(sys.argv[2], dpi=110)
    for r in runs:
        print(f"{r['gib']:6.2f} GiB  share {100 * r['share']:5.1f}%  {r['tok_s']:6.1f} tok/s  "
              f"predicted {predicted(r):6.1f}  ratio {r['tok_s'] / predicted(r):.2f}")


if __name__ == "__main__":
    main()
