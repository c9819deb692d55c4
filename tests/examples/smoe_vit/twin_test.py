#!/usr/bin/env python3
"""ctest smoe_vit.twin: the C++ ViT's forward and backward against its PyTorch twin (examples/smoe_vit/twin.py), one
training step per configuration: smoe_vit --dump-step writes the parameters, the augmented batch, the
probabilities, the losses and every gradient (float32), and `twin.py compare` rebuilds the model in float64 with the
same random draws and checks them within float32 roundoff (the language model twin's tolerances). Covers every policy
of the registry routed per image, TIES-CA, DARE-CA and dynamic merging routed per token, V-MoE's every-2 and last-2
placements, patches of 4 with mean pooling, a step other than 0 (a run resumed at step 3) and an upcycled model.
One twin process compares every dump. Exits 77 (skipped) when no Python with torch is found.

usage: twin_test.py SMOE_VIT_BINARY"""
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TWIN = os.path.join(HERE, "..", "..", "..", "examples", "smoe_vit", "twin.py")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "smoe_lm"))
sys.dont_write_bytecode = True
from tiny_images import run, tiny_vit, with_options  # noqa: E402
from twin_test import python_with_torch  # noqa: E402  (the language model's twin test: which Python has torch)

SKIP = 77


def main():
    binary = sys.argv[1]
    python, reasons = python_with_torch()
    if python is None:
        print("SKIP: no Python interpreter here can import torch:\n  " + "\n  ".join(reasons))
        sys.exit(SKIP)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        common = tiny_vit(tmp) + ["--steps", "6", "--seed", "7"]
        policies = ["dense", "smoe", "smear", "domain", "ties", "ties-ca", "dare", "dare-ca", "ca", "dynamic"]
        cases = [(p + " per image", ["--policy", p], None) for p in policies]
        cases += [(p + " per token", ["--policy", p, "--routing", "token"], None) for p in ("ties-ca", "dare-ca", "dynamic")]
        cases += [("ties every-2 of 4 blocks", ["--policy", "ties", "--moe-layers", "every-2", "--layers", "4"], None),
                  ("dynamic last-2 of 3 blocks", ["--policy", "dynamic", "--moe-layers", "last-2", "--layers", "3"], None),
                  ("dare-ca patches of 4, mean pooling", ["--policy", "dare-ca", "--patch", "4", "--pooling", "mean"], None),
                  ("dare-ca resumed at step 3", ["--policy", "dare-ca", "--resume", "{dir}/checkpoint.safetensors"],
                   ["--policy", "dare-ca", "--stop-after", "3"]),
                  ("ties-ca upcycled from dense", ["--policy", "ties-ca", "--upcycle-from", "{dir}/checkpoint.safetensors"],
                   ["--policy", "dense", "--stop-after", "2"])]
        dumps = []
        started = time.perf_counter()
        for index, (name, options, before) in enumerate(cases):
            args, options = with_options(common, options)
            out = os.path.join(tmp, f"case{index}")
            if before is not None:
                if run([binary] + args + before + ["--out", out + "-first"], name + " (first run)") is None:
                    failures += 1
                    continue
                options = [o.replace("{dir}", out + "-first") for o in options]
            dump = os.path.join(tmp, f"case{index}.safetensors")
            if run([binary] + args + options + ["--out", out, "--dump-step", dump], name) is None:
                failures += 1
                continue
            dumps.append((name, dump))
        print(f"{len(dumps)} dumps written in {time.perf_counter() - started:.1f} s")
        result = subprocess.run([python, TWIN, "compare"] + [d for _, d in dumps], capture_output=True, text=True)
        if result.returncode == SKIP:
            print(f"SKIP: twin.py could not run:\n{result.stdout}{result.stderr}")
            sys.exit(SKIP)
        print(result.stdout + result.stderr)
        passed = result.stdout.count("\nPASS:") + result.stdout.startswith("PASS:")
        if result.returncode != 0 or passed != len(dumps):
            failures += 1
        print(f"total {time.perf_counter() - started:.1f} s")
    print(f"{'PASS' if failures == 0 else 'FAIL'}: {len(cases)} configurations, {failures} failing")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
