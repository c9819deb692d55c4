#!/usr/bin/env python3
"""Runs smoe_lm for every policy and seed on one fixed budget (the same steps, batch and context, so the same
training tokens for every policy), then prints the table of docs/results.md: validation perplexity mean ± sd over
the seeds, tokens/s, and the command that reproduces each row. The raw numbers go to a JSON file.

usage: results.py SMOE_LM [--policies dense,smoe,...] [--seeds 1,2,3] [--steps N] [--out runs/results]
                         [--json docs/measurements/lm-results.json] [-- extra smoe_lm options]"""
import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time

POLICIES = ["dense", "smoe", "smear", "ties", "ties-ca", "dare", "dare-ca", "dynamic"]


def final_row(curves):
    with open(curves) as f:
        rows = list(csv.DictReader(f))
    valid = [r for r in rows if r["valid_loss"]]
    return rows, float(valid[-1]["valid_loss"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binary")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--out", default="runs/results")
    p.add_argument("--json", default=None)
    p.add_argument("extra", nargs="*", help="further smoe_lm options (after --)")
    a = p.parse_args()
    policies, seeds = a.policies.split(","), [int(s) for s in a.seeds.split(",")]
    results = []
    total = len(policies) * len(seeds)
    began = time.time()
    for i, (policy, seed) in enumerate((p_, s) for p_ in policies for s in seeds):
        out = os.path.join(a.out, f"{policy}-seed{seed}")
        args = ["--policy", policy, "--seed", str(seed), "--steps", str(a.steps), "--out", out, "--plot", "0"] + a.extra
        t0 = time.time()
        run = subprocess.run([a.binary] + args, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"{policy} seed {seed} failed:\n{run.stdout}\n{run.stderr}")
        rows, valid = final_row(os.path.join(out, "curves.csv"))
        tokens_per_s = statistics.median(float(r["tokens_per_second"]) for r in rows)
        results.append({"policy": policy, "seed": seed, "valid_loss": valid, "valid_perplexity": math.exp(valid),
                        "tokens_per_second": tokens_per_s, "seconds": time.time() - t0, "args": args})
        done = i + 1
        eta = (time.time() - began) / done * (total - done)
        print(f"[{done}/{total}] {policy} seed {seed}: valid perplexity {math.exp(valid):.2f}, {tokens_per_s:.0f} tok/s, "
              f"{time.time() - t0:.0f} s; ETA {eta / 60:.1f} min", flush=True)
    if a.json:
        os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
        with open(a.json + ".tmp", "w") as f:
            json.dump({"steps": a.steps, "extra": a.extra, "results": results}, f, indent=1)
        os.replace(a.json + ".tmp", a.json)
    print("\n| policy | valid perplexity (mean ± sd) | seeds | tokens/s (median) | command |")
    print("|---|---|---|---|---|")
    for policy in policies:
        rs = [r for r in results if r["policy"] == policy]
        ppl = [r["valid_perplexity"] for r in rs]
        sd = statistics.stdev(ppl) if len(ppl) > 1 else 0.0
        command = "`build/examples/smoe_lm/smoe_lm " + " ".join(
            x for j, x in enumerate(rs[0]["args"]) if not (rs[0]["args"][j - 1] == "--out" or x == "--out")).replace(
            f"--seed {rs[0]['seed']}", "--seed S") + "`"
        print(f"| {policy} | {statistics.mean(ppl):.2f} ± {sd:.2f} | {','.join(str(r['seed']) for r in rs)} | "
              f"{statistics.median(r['tokens_per_second'] for r in rs):.0f} | {command} |")


if __name__ == "__main__":
    main()
