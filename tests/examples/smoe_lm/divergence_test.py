#!/usr/bin/env python3
"""ctest smoe_lm.divergence: a run driven to divergence by a huge learning rate stops with a message naming the step
and the likely cause (exit 3), not with a library error, and leaves the last good checkpoint intact: its every
tensor finite, its step the one before the divergence, and a run resumed from it with a sane learning rate goes on.
For a merged policy (whose routing sees the blown-up activations first) and the dense model.

usage: divergence_test.py SMOE_LM_BINARY"""
import array
import math
import os
import re
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # importing tiny_runs leaves no __pycache__ in the source tree
from tiny_runs import read_safetensors, run, tiny_model  # noqa: E402


def all_finite(tensors):
    """The names of float32 tensors holding a NaN or an infinity."""
    bad = []
    for name, blob in tensors.items():
        values = array.array("f")
        values.frombytes(blob)
        if not all(math.isfinite(v) for v in values):
            bad.append(name)
    return bad


def main():
    binary = sys.argv[1]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        common = tiny_model(tmp) + ["--steps", "60", "--warmup", "0", "--log-every", "1", "--eval-every", "1000",
                                    "--eval-batches", "1", "--checkpoint-every", "1", "--seed", "3"]
        for policy in ["ties-ca", "dense"]:
            out = os.path.join(tmp, policy)
            result = subprocess.run([binary] + common + ["--policy", policy, "--lr", "1e6", "--clip", "0", "--out", out],
                                    capture_output=True, text=True)
            match = re.search(r"training diverged at step (\d+): (.*)", result.stderr)
            if result.returncode != 3 or not match or "likely cause" not in result.stderr or \
                    "learning rate" not in result.stderr:
                print(f"FAIL {policy}: expected exit 3 and a divergence report, got exit {result.returncode}\n"
                      f"{result.stdout[-2000:]}\n{result.stderr}")
                failures += 1
                continue
            step = int(match.group(1))
            checkpoint = os.path.join(out, "checkpoint.safetensors")
            if step == 0:
                print(f"FAIL {policy}: diverged at step 0, so no checkpoint can be checked (raise the step count)")
                failures += 1
                continue
            if "last good checkpoint, " + checkpoint not in result.stderr:
                print(f"FAIL {policy}: the report does not name the last good checkpoint:\n{result.stderr}")
                failures += 1
            metadata, tensors = read_safetensors(checkpoint)
            bad = all_finite(tensors)
            if metadata.get("step") != str(step) or bad:
                print(f"FAIL {policy}: the checkpoint holds step {metadata.get('step')} (expected {step}), "
                      f"non-finite tensors {bad[:5]}")
                failures += 1
                continue
            sane = list(common)
            sane[sane.index("--steps") + 1] = str(step + 2)
            resumed = run([binary] + sane + ["--policy", policy, "--lr", "1e-3", "--out",
                                             os.path.join(tmp, policy + "-resumed"), "--resume", checkpoint],
                          policy + ", resumed with a sane learning rate")
            if resumed is None:
                failures += 1
                continue
            print(f"ok {policy}: diverged at step {step} ({match.group(1 + 1)[:80]}...), checkpoint of step {step} "
                  f"finite in all {len(tensors)} tensors and resumable")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
