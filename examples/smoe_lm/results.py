#!/usr/bin/env python3
"""Runs smoe_lm for every policy and seed on one fixed budget (the same steps, batch and context, so the same
training tokens for every policy), then prints the table of docs/results.md: validation perplexity mean ± sd over
the seeds, tokens/s, and the command that reproduces each row. The raw numbers go to a JSON file.

With --ceilings CAMEX_CEILINGS it first measures the machine's ceilings (STREAM, native and system SGEMM), and
with --twin-steps N it times the PyTorch twin (twin.py train) on each policy's configuration right after the
policy's first seed, so the C++ and PyTorch throughputs come from the same sitting.

With --plot FILE.png it draws every policy's validation loss against the step, averaged over the seeds (gnuplot),
beside the CSV of the same curves (FILE.csv). --tabulate JSON redraws the table and the plot from a JSON file of an
earlier sitting without running anything.

usage: results.py [SMOE_LM] [--policies dense,smoe,...] [--seeds 1,2,3] [--steps N] [--out runs/results]
                         [--ceilings CAMEX_CEILINGS] [--twin-steps N] [--json FILE] [--plot FILE.png]
                         [--tabulate JSON] [-- extra smoe_lm options]"""
import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
sys.dont_write_bytecode = True  # importing results_curves leaves no __pycache__ in the source tree
import results_curves  # noqa: E402

POLICIES = ["dense", "smoe", "smear", "ties", "ties-ca", "dare", "dare-ca", "dynamic"]


def final_row(curves):
    with open(curves) as f:
        rows = list(csv.DictReader(f))
    valid = [r for r in rows if r["valid_loss"]]
    return rows, float(valid[-1]["valid_loss"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binary", nargs="?", help="the smoe_lm program (not needed with --tabulate)")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--out", default="runs/results")
    p.add_argument("--json", default=None)
    p.add_argument("--ceilings", default=None, help="the camex_ceilings binary")
    p.add_argument("--twin-steps", type=int, default=0, help="time the PyTorch twin for this many steps per policy")
    p.add_argument("--plot", default=None, help="PNG of the validation curves (and a CSV beside it)")
    p.add_argument("--tabulate", default=None, help="print the table (and --plot) from this JSON; run nothing")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    a = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    a.extra = extra
    policies, seeds = a.policies.split(","), [int(s) for s in a.seeds.split(",")]
    if a.tabulate:
        with open(a.tabulate) as f:
            saved = json.load(f)
        policies = list(dict.fromkeys(r["policy"] for r in saved["results"]))
        tabulate(policies, saved["results"], saved.get("twin_tokens_per_second", {}), a.plot)
        return
    if not a.binary:
        p.error("the smoe_lm program is needed unless --tabulate is given")
    results, twin = [], {}
    ceilings = None
    if a.ceilings:
        ceilings = json.loads(subprocess.run([a.ceilings], capture_output=True, text=True, check=True).stdout)
        print(f"ceilings: {json.dumps(ceilings)}", flush=True)
    twin_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "twin.py")
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
        if a.twin_steps and policy not in twin:
            timed = subprocess.run(["/usr/bin/python3", twin_script, "train", os.path.join(out, "config.json"), "--steps",
                                    str(a.twin_steps), "--threads", os.environ.get("OMP_NUM_THREADS", "2")],
                                   capture_output=True, text=True)
            line = [l for l in timed.stdout.splitlines() if "timed steps" in l]
            if timed.returncode != 0 or not line:
                sys.exit(f"twin.py train failed for {policy}:\n{timed.stdout}\n{timed.stderr}")
            twin[policy] = float(line[-1].split(":")[1].split("tok/s")[0])
            print(f"    PyTorch twin, {policy}: {twin[policy]:.0f} tok/s", flush=True)
        done = i + 1
        eta = (time.time() - began) / done * (total - done)
        print(f"[{done}/{total}] {policy} seed {seed}: valid perplexity {math.exp(valid):.2f}, {tokens_per_s:.0f} tok/s, "
              f"{time.time() - t0:.0f} s; ETA {eta / 60:.1f} min", flush=True)
    if a.json:
        os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
        with open(a.json + ".tmp", "w") as f:
            json.dump({"steps": a.steps, "extra": a.extra, "ceilings": ceilings, "twin_tokens_per_second": twin,
                       "results": results}, f, indent=1)
        os.replace(a.json + ".tmp", a.json)
    tabulate(policies, results, twin, a.plot)


def tabulate(policies, results, twin, plot):
    print("\n| policy | valid perplexity (mean ± sd) | seeds | C++ tokens/s (median) | PyTorch twin tokens/s | ratio | command |")
    print("|---|---|---|---|---|---|---|")
    for policy in policies:
        rs = [r for r in results if r["policy"] == policy]
        ppl = [r["valid_perplexity"] for r in rs]
        sd = statistics.stdev(ppl) if len(ppl) > 1 else 0.0
        args = rs[0]["args"]
        command = "`build/examples/smoe_lm/smoe_lm " + " ".join(
            x for j, x in enumerate(args) if not (x == "--out" or (j > 0 and args[j - 1] == "--out"))).replace(
            f"--seed {rs[0]['seed']}", "--seed S") + "`"
        cpp = statistics.median(r["tokens_per_second"] for r in rs)
        torch_rate = twin.get(policy)
        print(f"| {policy} | {statistics.mean(ppl):.2f} ± {sd:.2f} | {','.join(str(r['seed']) for r in rs)} | {cpp:.0f} | "
              + (f"{torch_rate:.0f} | {cpp / torch_rate:.1f}x" if torch_rate else "- | -") + f" | {command} |")
    if plot:
        results_curves.draw(policies, results, plot, "valid_loss", "smoe_lm on Brown: validation loss, mean over seeds",
                            "validation cross-entropy (nats/token)", "top right")


if __name__ == "__main__":
    main()
