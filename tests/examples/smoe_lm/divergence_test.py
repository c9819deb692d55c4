#!/usr/bin/env python3
"""ctest smoe_lm.divergence: a run driven to divergence by a huge learning rate stops with a message naming the step
and the likely cause (exit 3), not with a library error, and leaves the last checkpoint it wrote intact: every
tensor finite, its step the one before the divergence. For a merged policy (whose routing sees the blown-up
activations first) and the dense model (whose AdamW update overflows first). And a good checkpoint resumed with the
huge rate is named in the report, left byte for byte as it was, and resumes with a sane rate.

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
            print(f"ok {policy}: diverged at step {step} ({match.group(2)[:80]}...), the checkpoint of step {step} "
                  f"finite in all {len(tensors)} tensors")
        # A good checkpoint from a sane run, resumed into the same directory with the huge rate: the run diverges,
        # names that checkpoint, leaves its bytes as they were, and a sane resume from it goes on.
        out = os.path.join(tmp, "sane")
        sane = list(common)
        sane[sane.index("--steps") + 1] = "4"
        sane[sane.index("--checkpoint-every") + 1] = "0"
        if run([binary] + sane + ["--policy", "ties-ca", "--lr", "1e-3", "--out", out], "a sane run") is None:
            failures += 1
        else:
            checkpoint = os.path.join(out, "checkpoint.safetensors")
            with open(checkpoint, "rb") as f:
                before = f.read()
            longer = list(sane)
            longer[longer.index("--steps") + 1] = "60"
            result = subprocess.run([binary] + longer + ["--policy", "ties-ca", "--lr", "1e6", "--clip", "0", "--out", out,
                                                         "--resume", checkpoint], capture_output=True, text=True)
            with open(checkpoint, "rb") as f:
                after = f.read()
            named = f"last good checkpoint, {checkpoint} (after step 4), is intact"
            if result.returncode != 3 or named not in result.stderr or after != before:
                print(f"FAIL: resuming a good checkpoint with --lr 1e6: exit {result.returncode}, checkpoint "
                      f"{'unchanged' if after == before else 'CHANGED'}\n{result.stderr}")
                failures += 1
            else:
                again = list(sane)
                again[again.index("--steps") + 1] = "6"
                if run([binary] + again + ["--policy", "ties-ca", "--lr", "1e-3", "--out", os.path.join(tmp, "again"),
                                           "--resume", checkpoint], "the good checkpoint, resumed sanely") is None:
                    failures += 1
                else:
                    print("ok: the good checkpoint is named, left byte for byte as it was, and resumes")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
