#!/usr/bin/python3
"""The example trainers' speed in one sitting: the dense language model's training step against the native SGEMM
ceiling, and the ViT's training images/s against its PyTorch twin's for every policy.

Run through benchmarks/trainers, which sets up and builds first. The SGEMM ceiling (camex_ceilings) is measured
before and after the trainers and the better of the two kept, as benchmarks/run does. Each ViT policy is timed in
--rounds rounds, the C++ trainer and then its twin on the same configuration (the config.json the C++ run
wrote), so a slow spell of the machine touches both sides; each side's best round is kept. The C++ rate is the
trainer's own summary (training images over training seconds, validation excluded); the twin's is its timed steps
after two warm-up steps. Both run on the same number of threads.

On a GPU (--device cuda: BUILD_DIR holds trainers built for Kokkos' Cuda backend, scripts/gpu-check) the ceiling
is cuBLAS's fp32 SGEMM on the device, the twins train on the same GPU, and --lm-twin also times the language
model against its twin at the shape --lm-options gives (scripts/gpu-check: a GPT-2-small-like SMoE).

usage: trainers.py BUILD_DIR [--policies dense,smoe,...] [--rounds 2] [--vit-steps 200] [--twin-steps 30]
                   [--lm-steps 100] [--lm-policy dense] [--lm-options "..."] [--lm-twin] [--vit-options "..."]
                   [--device cpu|cuda]
                   [--threads N] [--json FILE]"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICIES = ["dense", "smoe", "smear", "ties", "ties-ca", "dare", "dare-ca", "dynamic"]


def run(command, env):
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{os.path.basename(sys.argv[0])}: {' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n"
                 f"{done.stderr}")
    return done.stdout


def summary_rate(output, unit):
    """The trainer's closing 'training N <unit>/s = G GFLOP/s' line: (rate, GFLOP/s)."""
    found = re.search(r"training ([0-9.]+) " + unit + r"/s = ([0-9.]+) GFLOP/s", output)
    if not found:
        sys.exit(f"trainers.py: no 'training ... {unit}/s' line in:\n{output}")
    return float(found.group(1)), float(found.group(2))


def ceiling(build, env, device):
    """The SGEMM rate the trainers' model FLOPs are set against: Eigen's native one on the CPU, cuBLAS's on a GPU."""
    rates = json.loads(run([os.path.join(build, "benchmarks", "camex_ceilings")], env))
    return rates["device_sgemm_GFLOPs" if device == "cuda" else "sgemm_native_GFLOPs"]


def twin_rate(script, config, steps, threads, device, unit, env):
    timed = run([sys.executable, script, "train", config, "--steps", str(steps), "--threads", str(threads), "--device", device], env)
    found = re.search(r"timed steps: ([0-9.]+) " + unit + "/s", timed)
    if not found:
        sys.exit(f"trainers.py: {os.path.basename(script)} train printed no rate:\n{timed}")
    return float(found.group(1))


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
    p.add_argument("--lm-policy", default="dense")
    p.add_argument("--lm-options", default="", help="more smoe_lm options: the model's shape, the data's folders")
    p.add_argument("--lm-twin", action="store_true", help="also time the language model's twin on the same config")
    p.add_argument("--vit-options", default="", help="more smoe_vit options, e.g. --data DIR")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    p.add_argument("--json")
    a = p.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OMP_PROC_BIND=os.environ.get("OMP_PROC_BIND", "spread"),
               OMP_PLACES=os.environ.get("OMP_PLACES", "threads"))
    lm_binary = os.path.join(a.build, "examples", "smoe_lm", "smoe_lm")
    vit_binary = os.path.join(a.build, "examples", "smoe_vit", "smoe_vit")
    twin = os.path.join(ROOT, "examples", "smoe_vit", "twin.py")
    lm_twin = os.path.join(ROOT, "examples", "smoe_lm", "twin.py")
    quiet = ["--checkpoint-every", "0", "--plot", "0", "--eval-batches", "1"]

    with tempfile.TemporaryDirectory() as scratch:
        progress(f"SGEMM ceiling ({'the GPU' if a.device == 'cuda' else f'{a.threads} threads'})")
        ceilings = [ceiling(a.build, env, a.device)]
        lm_out = os.path.join(scratch, "lm")
        lm_args = ["--policy", a.lm_policy, "--steps", str(a.lm_steps), "--warmup", "10", "--log-every",
                   str(a.lm_steps), "--eval-every", str(a.lm_steps), "--out", lm_out] + quiet + shlex.split(a.lm_options)
        lm_rounds, lm_twin_rates = [], []
        for round_ in range(a.rounds):
            progress(f"{a.lm_policy} language model: round {round_ + 1}/{a.rounds}, {a.lm_steps} steps")
            lm_rounds.append(summary_rate(run([lm_binary] + lm_args, env), "tokens"))
            if a.lm_twin:
                lm_twin_rates.append(twin_rate(lm_twin, os.path.join(lm_out, "config.json"), a.twin_steps, a.threads,
                                               a.device, "tok", env))
        tokens, lm_gflops = max(lm_rounds)
        vit = {}
        for policy in a.policies.split(","):
            out = os.path.join(scratch, policy)
            args = ["--policy", policy, "--steps", str(a.vit_steps), "--log-every", str(a.vit_steps),
                    "--eval-every", str(a.vit_steps), "--out", out] + quiet + shlex.split(a.vit_options)
            cpp, torch_rates = [], []
            for round_ in range(a.rounds):
                progress(f"ViT {policy}: round {round_ + 1}/{a.rounds}, C++ {a.vit_steps} steps, twin {a.twin_steps}")
                cpp.append(summary_rate(run([vit_binary] + args, env), "images")[0])
                torch_rates.append(twin_rate(twin, os.path.join(out, "config.json"), a.twin_steps, a.threads,
                                             a.device, "img", env))
            vit[policy] = {"cpp_images_per_second": cpp, "twin_images_per_second": torch_rates,
                           "ratio": max(cpp) / max(torch_rates), "command": ["smoe_vit"] + args}
        progress("SGEMM ceiling again")
        ceilings.append(ceiling(a.build, env, a.device))

    best_ceiling = max(ceilings)
    ceiling_name = "cuBLAS fp32 SGEMM" if a.device == "cuda" else "native SGEMM"
    lm = {"policy": a.lm_policy, "tokens_per_second": [r[0] for r in lm_rounds], "model_GFLOPs": lm_gflops,
          "share_of_sgemm": lm_gflops / best_ceiling, "command": ["smoe_lm"] + lm_args}
    if lm_twin_rates:
        lm.update(twin_tokens_per_second=lm_twin_rates, ratio=tokens / max(lm_twin_rates))
    result = {"device": a.device, "threads": a.threads,
              ("device_sgemm_GFLOPs" if a.device == "cuda" else "sgemm_native_GFLOPs"): ceilings,
              "lm_dense" if a.lm_policy == "dense" else "lm": lm, "vit": vit}
    print(f"{ceiling_name} ceiling {best_ceiling:.1f} GFLOP/s (best of {', '.join(f'{c:.1f}' for c in ceilings)})")
    print(f"{a.lm_policy} LM step (best of {a.rounds} rounds): {tokens:.0f} tokens/s = {lm_gflops:.1f} GFLOP/s of model "
          f"FLOPs = {100 * lm_gflops / best_ceiling:.1f} % of the {ceiling_name} ceiling"
          + (f"; its twin {max(lm_twin_rates):.0f} tokens/s, C++ / twin {lm['ratio']:.2f}x" if lm_twin_rates else ""))
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
