#!/usr/bin/env python3
"""Runs smoe_vit for every policy and seed on one fixed budget (the same steps and batch, so the same training images
for every policy), then prints the table of docs/results-vit.md: test accuracy mean ± sd over the seeds, the C++
images/s beside the PyTorch twin's on the same configuration in the same sitting, and the command of each row. The
raw numbers go to a JSON file; --plot FILE.png draws every policy's validation accuracy against the step (mean over
the seeds) beside a CSV of the same curves. --tabulate JSON redraws the table and plot from an earlier sitting.

usage: results.py [SMOE_VIT] [--policies dense,smoe,...] [--seeds 1,2,3] [--steps N] [--out runs/results-vit]
                  [--twin-steps N] [--json FILE] [--plot FILE.png] [--tabulate JSON] [-- extra smoe_vit options]"""
import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
sys.dont_write_bytecode = True  # importing results_curves leaves no __pycache__ in the source tree
import results_curves  # noqa: E402

POLICIES = ["dense", "smoe", "smear", "ties", "ties-ca", "dare", "dare-ca", "dynamic"]


def run_policy(binary, policy, seed, steps, out, extra):
    args = ["--policy", policy, "--seed", str(seed), "--steps", str(steps), "--out", out, "--plot", "0"] + extra
    t0 = time.time()
    run = subprocess.run([binary] + args, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{policy} seed {seed} failed:\n{run.stdout}\n{run.stderr}")
    test = re.search(r"test accuracy ([0-9.]+) \(loss ([0-9.]+)\)", run.stdout)
    with open(os.path.join(out, "curves.csv")) as f:
        rows = list(csv.DictReader(f))
    return {"policy": policy, "seed": seed, "test_accuracy": float(test.group(1)), "test_loss": float(test.group(2)),
            "valid_accuracy": float([r for r in rows if r["valid_loss"]][-1]["valid_accuracy"]),
            "images_per_second": statistics.median(float(r["images_per_second"]) for r in rows),
            "seconds": time.time() - t0, "args": args}


def twin_rate(config, steps):
    twin = os.path.join(os.path.dirname(os.path.abspath(__file__)), "twin.py")
    timed = subprocess.run(["/usr/bin/python3", twin, "train", config, "--steps", str(steps), "--threads",
                            os.environ.get("OMP_NUM_THREADS", "2")], capture_output=True, text=True)
    line = [l for l in timed.stdout.splitlines() if "timed steps" in l]
    if timed.returncode != 0 or not line:
        sys.exit(f"twin.py train failed on {config}:\n{timed.stdout}\n{timed.stderr}")
    return float(line[-1].split(":")[1].split("img/s")[0])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binary", nargs="?", help="the smoe_vit program (not needed with --tabulate)")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--out", default="runs/results-vit")
    p.add_argument("--json", default=None)
    p.add_argument("--twin-steps", type=int, default=0, help="time the PyTorch twin for this many steps per policy")
    p.add_argument("--plot", default=None, help="PNG of the validation accuracy curves (and a CSV beside it)")
    p.add_argument("--tabulate", default=None, help="print the table (and --plot) from this JSON; run nothing")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    a = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if a.tabulate:
        with open(a.tabulate) as f:
            saved = json.load(f)
        tabulate(list(dict.fromkeys(r["policy"] for r in saved["results"])), saved["results"], saved["twin"], a.plot)
        return
    if not a.binary:
        p.error("the smoe_vit program is needed unless --tabulate is given")
    policies, seeds = a.policies.split(","), [int(s) for s in a.seeds.split(",")]
    results, twin = [], {}
    total, began = len(policies) * len(seeds), time.time()
    for i, (policy, seed) in enumerate((p_, s) for p_ in policies for s in seeds):
        out = os.path.join(a.out, f"{policy}-seed{seed}")
        r = run_policy(a.binary, policy, seed, a.steps, out, extra)
        results.append(r)
        if a.twin_steps and policy not in twin:
            twin[policy] = twin_rate(os.path.join(out, "config.json"), a.twin_steps)
            print(f"    PyTorch twin, {policy}: {twin[policy]:.0f} img/s", flush=True)
        done = i + 1
        eta = (time.time() - began) / done * (total - done)
        print(f"[{done}/{total}] {policy} seed {seed}: test accuracy {r['test_accuracy']:.4f}, "
              f"{r['images_per_second']:.0f} img/s, {r['seconds']:.0f} s; ETA {eta / 60:.1f} min", flush=True)
        if a.json:  # after every run, so an interrupted sitting keeps what it measured
            os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
            with open(a.json + ".tmp", "w") as f:
                json.dump({"steps": a.steps, "extra": extra, "twin": twin, "results": results}, f, indent=1)
            os.replace(a.json + ".tmp", a.json)
    tabulate(policies, results, twin, a.plot)


def tabulate(policies, results, twin, plot):
    print("\n| policy | test accuracy (mean ± sd) | seeds | C++ images/s (median) | PyTorch twin images/s | ratio | command |")
    print("|---|---|---|---|---|---|---|")
    for policy in policies:
        rs = [r for r in results if r["policy"] == policy]
        acc = [r["test_accuracy"] for r in rs]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        args = rs[0]["args"]
        command = "`build/examples/smoe_vit/smoe_vit " + " ".join(
            x for j, x in enumerate(args) if not (x == "--out" or (j > 0 and args[j - 1] == "--out"))).replace(
            f"--seed {rs[0]['seed']}", "--seed S") + "`"
        cpp = statistics.median(r["images_per_second"] for r in rs)
        rate = twin.get(policy)
        print(f"| {policy} | {100 * statistics.mean(acc):.2f} ± {100 * sd:.2f} % | {','.join(str(r['seed']) for r in rs)} | "
              f"{cpp:.0f} | " + (f"{rate:.0f} | {cpp / rate:.1f}x" if rate else "- | -") + f" | {command} |")
    if plot:
        results_curves.draw(policies, results, plot, "valid_accuracy",
                            "smoe_vit on Fashion-MNIST: validation accuracy, mean over seeds", "validation accuracy",
                            "bottom right")


if __name__ == "__main__":
    main()
