#!/usr/bin/env python3
"""ctest smoe_lm.twin: the C++ model's forward and backward against its PyTorch twin (examples/smoe_lm/twin.py), one
training step per configuration: smoe_lm --dump-step writes the parameters, the batch, the probabilities, the
losses and every gradient (float32), and `twin.py compare` rebuilds the model in float64 with the same random draws
and checks them within float32 roundoff. Covers every policy (dense, smoe with top-2 of 3, smear, domain, ties,
ties-ca, dare, dare-ca, ca, dynamic) with causal segment routing, sequence routing, a step other than 0 (a run
resumed at step 3, so the step's random stream and trained parameters) and an upcycled model (every delta 0). Runs
on a small WikiText-style directory this test writes (tiny_runs.py). Exits 77 (skipped) when no Python with
torch is found: twin.py needs PyTorch, which Debian's python3-torch installs for /usr/bin/python3.

usage: twin_test.py SMOE_LM_BINARY [--keep DIR]   (--keep: write the corpus and the dumps to DIR and keep them)"""
import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TWIN = os.path.join(HERE, "..", "..", "..", "examples", "smoe_lm", "twin.py")
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # importing tiny_runs leaves no __pycache__ in the source tree
from tiny_runs import run, tiny_model  # noqa: E402

SKIP = 77


def python_with_torch():
    """This interpreter if it can import torch, else /usr/bin/python3 if that can; None otherwise."""
    reasons = []
    for candidate in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        if not os.path.exists(candidate):
            continue
        probe = subprocess.run([candidate, "-c", "import torch"], capture_output=True, text=True)
        if probe.returncode == 0:
            return candidate, reasons
        reasons.append(f"{candidate}: {(probe.stderr.strip().splitlines() or ['no output'])[-1]}")
    return None, reasons


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary")
    parser.add_argument("--keep", help="work in this directory and keep the dumps (for debugging)")
    args = parser.parse_args()
    binary = args.binary
    python, reasons = python_with_torch()
    if python is None:
        print("SKIP: no Python interpreter here can import torch (twin.py needs PyTorch; Debian's python3-torch "
              "installs it for /usr/bin/python3):\n  " + "\n  ".join(reasons))
        sys.exit(SKIP)
    failures = 0
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    with (contextlib.nullcontext(os.path.abspath(args.keep)) if args.keep else tempfile.TemporaryDirectory()) as tmp:
        common = tiny_model(tmp) + ["--steps", "6", "--warmup", "2", "--seed", "5"]
        # (name, extra options, [options of a run to make first, with {dir} its --out]).
        cases = [
            ("dense", ["--policy", "dense"], None),
            ("smoe top-2", ["--policy", "smoe", "--top-k", "2"], None),
            ("smear", ["--policy", "smear"], None),
            ("domain", ["--policy", "domain"], None),
            ("ties", ["--policy", "ties"], None),
            ("ties-ca segments", ["--policy", "ties-ca", "--routing", "segment"], None),
            ("dare", ["--policy", "dare"], None),
            ("dare-ca", ["--policy", "dare-ca"], None),
            ("ca", ["--policy", "ca", "--rank", "3"], None),
            ("dynamic", ["--policy", "dynamic"], None),
            ("ties-ca sequence routing", ["--policy", "ties-ca", "--routing", "sequence"], None),
            ("smoe sequence routing, no noise", ["--policy", "smoe", "--routing", "sequence", "--router-noise", "0"],
             None),
            ("dare-ca resumed at step 3", ["--policy", "dare-ca", "--resume", "{dir}/checkpoint.safetensors"],
             ["--policy", "dare-ca", "--stop-after", "3"]),
            ("ties-ca upcycled from dense", ["--policy", "ties-ca", "--upcycle-from", "{dir}/checkpoint.safetensors"],
             ["--policy", "dense", "--stop-after", "2"]),
        ]
        dumps = []
        started = time.perf_counter()
        for index, (name, options, before) in enumerate(cases):
            out = os.path.join(tmp, f"case{index}")
            if before is not None:
                if run([binary] + common + before + ["--out", out + "-first"], name + " (first run)") is None:
                    failures += 1
                    continue
                options = [o.replace("{dir}", out + "-first") for o in options]
            dump = os.path.join(tmp, f"case{index}.safetensors")
            if run([binary] + common + options + ["--out", out, "--dump-step", dump], name) is None:
                failures += 1
                continue
            dumps.append((name, dump))
        print(f"{len(dumps)} dumps written in {time.perf_counter() - started:.1f} s")
        for name, dump in dumps:
            result = subprocess.run([python, TWIN, "compare", dump], capture_output=True, text=True)
            if result.returncode == SKIP:
                print(f"SKIP: twin.py could not run:\n{result.stdout}{result.stderr}")
                sys.exit(SKIP)
            verdict = "ok  " if result.returncode == 0 else "FAIL"
            print(f"{verdict} {name}")
            if result.returncode != 0:
                failures += 1
                print(result.stdout + result.stderr)
            else:
                # The check closest to its tolerance, for the log.
                def used(line):
                    words = line.split()
                    return float(words[words.index("worst") + 1]) / float(words[words.index("(tolerance") + 1][:-1])
                lines = [line for line in result.stdout.splitlines() if line.startswith("ok") and "(tolerance" in line]
                worst = max(lines, key=used, default="")
                print("     closest to its tolerance: " + " ".join(worst.split()[1:]))
        print(f"total {time.perf_counter() - started:.1f} s")
    print(f"{'PASS' if failures == 0 else 'FAIL'}: {len(cases)} configurations, {failures} failing")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
