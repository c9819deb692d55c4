#!/usr/bin/python3
"""The example trainers' speed in one sitting: the dense language model's training step against the native SGEMM
ceiling, and the ViT's training images/s against its PyTorch twin's for every policy.

Run through benchmarks/trainers, which sets up and builds first. The SGEMM ceiling (camex_ceilings) is measured
before and after the trainers and the better of the two kept, as benchmarks/run does. Each ViT policy is timed in
--rounds rounds, the C++ trainer and then its twin on the same configuration (the config.json the C++ run
wrote), so a slow spell of the machine touches both sides; each side's best round is kept. The C++ rate is the
trainer's own summary (training images over training seconds, validation excluded); the twin's is its timed steps
after two warm-up steps. Both run on the same number of threads.

usage: trainers.py BUILD_DIR [--policies dense,smoe,...] [--rounds 2] [--vit-steps 200] [--twin-steps 30]
                   [--lm-steps 100] [--threads N] [--json FILE]"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICIES = ["dense", "smoe", "smear", "ties", "ties-ca", "dare", "dare-ca", "dynamic"]


def run(command, env):
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"trainers.py: {' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def summary_rate(output, unit):
    """The trainer's closing 'training N <unit>/s = G GFLOP/s' line: (rate, GFLOP/s)."""
    found = re.search(r"training ([0-9.]+) " + unit + r"/s = ([0-9.]+) GFLOP/s", output)
    if not found:
        sys.exit(f"trainers.py: no 'training ... {unit}/s' line in:\n{output}")
    return float(found.group(1)), float(found.group(2))


def ceiling(build, env):
    return json.loads(run([os.path.join(build, "benchmarks", "camex_ceilings")], env))["sgemm_native_GFLOPs"]


def progress(text):
    print(text, file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("build")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--vit-steps", type=int, default=200)
    p.add_argument("--twin-steps", type=int, default=30)
    p.add_argument("--lm-steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    p.add_argument("--json")
    a = p.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OMP_PROC_BIND=os.environ.get("OMP_PROC_BIND", "spread"),
               OMP_PLACES=os.environ.get("OMP_PLACES", "threads"))
    lm_binary = os.path.join(a.build, "examples", "smoe_lm", "smoe_lm")
    vit_binary = os.path.join(a.build, "examples", "smoe_vit", "smoe_vit")
    twin = os.path.join(ROOT, "examples", "smoe_vit", "twin.py")
    quiet = ["--checkpoint-every", "0", "--plot", "0", "--eval-batches", "1"]

    with tempfile.TemporaryDirectory() as scratch:
        progress(f"SGEMM ceiling ({a.threads} threads)")
        ceilings = [ceiling(a.build, env)]
        lm_args = ["--policy", "dense", "--steps", str(a.lm_steps), "--warmup", "10", "--log-every",
                   str(a.lm_steps), "--eval-every", str(a.lm_steps), "--out", os.path.join(scratch, "lm")] + quiet
        lm_rounds = []
        for round_ in range(a.rounds):
            progress(f"dense language model: round {round_ + 1}/{a.rounds}, {a.lm_steps} steps")
            lm_rounds.append(summary_rate(run([lm_binary] + lm_args, env), "tokens"))
        tokens, lm_gflops = max(lm_rounds)
        vit = {}
        for policy in a.policies.split(","):
            out = os.path.join(scratch, policy)
            args = ["--policy", policy, "--steps", str(a.vit_steps), "--log-every", str(a.vit_steps),
                    "--eval-every", str(a.vit_steps), "--out", out] + quiet
            cpp, torch_rates = [], []
            for round_ in range(a.rounds):
                progress(f"ViT {policy}: round {round_ + 1}/{a.rounds}, C++ {a.vit_steps} steps, twin {a.twin_steps}")
                cpp.append(summary_rate(run([vit_binary] + args, env), "images")[0])
                timed = run(["/usr/bin/python3", twin, "train", os.path.join(out, "config.json"), "--steps",
                             str(a.twin_steps), "--threads", str(a.threads)], env)
                found = re.search(r"timed steps: ([0-9.]+) img/s", timed)
                if not found:
                    sys.exit(f"trainers.py: twin.py train printed no rate:\n{timed}")
                torch_rates.append(float(found.group(1)))
            vit[policy] = {"cpp_images_per_second": cpp, "twin_images_per_second": torch_rates,
                           "ratio": max(cpp) / max(torch_rates), "command": ["smoe_vit"] + args}
        progress("SGEMM ceiling again")
        ceilings.append(ceiling(a.build, env))

    best_ceiling = max(ceilings)
    result = {"threads": a.threads, "sgemm_native_GFLOPs": ceilings,
              "lm_dense": {"tokens_per_second": [r[0] for r in lm_rounds], "model_GFLOPs": lm_gflops,
                           "share_of_sgemm": lm_gflops / best_ceiling, "command": ["smoe_lm"] + lm_args},
              "vit": vit}
    print(f"native SGEMM ceiling {best_ceiling:.1f} GFLOP/s (best of {', '.join(f'{c:.1f}' for c in ceilings)})")
    print(f"dense LM step (best of {a.rounds} rounds): {tokens:.0f} tokens/s = {lm_gflops:.1f} GFLOP/s of model FLOPs = "
          f"{100 * lm_gflops / best_ceiling:.1f} % of the SGEMM ceiling")
    print("| policy | C++ images/s (best of rounds) | PyTorch twin images/s | C++ / twin |")
    print("|---|---|---|---|")
    for policy, r in vit.items():
        print(f"| {policy} | {max(r['cpp_images_per_second']):.0f} | {max(r['twin_images_per_second']):.0f} | "
              f"{r['ratio']:.2f}x |")
    if a.json:
        temporary = a.json + ".partial"
        with open(temporary, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(temporary, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
