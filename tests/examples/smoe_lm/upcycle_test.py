#!/usr/bin/env python3
"""ctest smoe_lm.upcycle: a dense model trained by smoe_lm upcycles into an SMoE model the way the CAMEx code does.
After --upcycle-from, every expert and base of each merged MLP tensor holds the dense MLP's tensor, every other
tensor holds the dense model's, and (docs/algorithms.md §10: upcycled step 0, all deltas zero) the merged model's cross-entropy on
a batch equals the dense model's on the same batch, for TIES-CA and dynamic merging. Runs on a small WikiText-style
directory this test writes.

usage: upcycle_test.py SMOE_LM_BINARY"""
import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # importing tiny_runs leaves no __pycache__ in the source tree
from tiny_runs import read_safetensors, run, tiny_model  # noqa: E402


def main():
    binary, failures = sys.argv[1], 0
    with tempfile.TemporaryDirectory() as tmp:
        common = tiny_model(tmp) + ["--warmup", "2", "--log-every", "2", "--eval-every", "4", "--eval-batches", "2",
                                    "--seed", "3"]
        dense = os.path.join(tmp, "dense")
        if run([binary] + common + ["--policy", "dense", "--steps", "8", "--out", dense], "dense") is None:
            sys.exit(1)
        checkpoint = os.path.join(dense, "checkpoint.safetensors")
        _, trained = read_safetensors(checkpoint)
        # The dense model with the trained weights, at step 0's batch: upcycling a dense model into itself.
        reference = os.path.join(tmp, "dense-step0.safetensors")
        if run([binary] + common + ["--policy", "dense", "--steps", "8", "--out", os.path.join(tmp, "d0"),
                                    "--upcycle-from", checkpoint, "--dump-step", reference], "dense, step 0") is None:
            sys.exit(1)
        dense_meta, _ = read_safetensors(reference)
        for policy in ["ties-ca", "dynamic"]:
            dump = os.path.join(tmp, policy + ".safetensors")
            out = run([binary] + common + ["--policy", policy, "--steps", "8", "--out", os.path.join(tmp, policy),
                                           "--upcycle-from", checkpoint, "--dump-step", dump], policy)
            if out is None:
                failures += 1
                continue
            if "upcycled" not in out:
                print(f"FAIL {policy}: no 'upcycled' line:\n{out}")
                failures += 1
            meta, tensors = read_safetensors(dump)
            checked = 0
            for name, value in tensors.items():
                if not name.startswith("param/"):
                    continue
                name = name[len("param/"):]
                if name in trained:
                    source = trained[name]
                elif name.rsplit(".", 1)[-1] in ("experts", "base"):
                    source = trained[name.rsplit(".", 1)[0]]
                    source = source * (len(value) // len(source))  # every expert (and the base) is the dense tensor
                else:
                    continue  # curvature factors and routers keep their own initialisation
                checked += 1
                if value != source:
                    print(f"FAIL {policy}: {name} does not hold the dense model's values")
                    failures += 1
            # All deltas are zero, so each merge is its base, the dense weight: the same function as the dense model
            # (up to float32 rounding of differently blocked products: relative 1e-5 covers it).
            ce, ce_dense = float(meta["cross_entropy"]), float(dense_meta["cross_entropy"])
            if abs(ce - ce_dense) > 1e-5 * abs(ce_dense):
                print(f"FAIL {policy}: cross-entropy {ce} after upcycling, dense model {ce_dense}")
                failures += 1
            else:
                print(f"ok {policy}: {checked} tensors from the dense model; cross-entropy {ce:.7f} = dense {ce_dense:.7f}")
        wider = list(common)
        wider[wider.index("--channels") + 1] = "24"
        other = subprocess.run([binary] + wider + ["--policy", "ties", "--steps", "8", "--out", os.path.join(tmp, "x"),
                                                   "--upcycle-from", checkpoint],
                               capture_output=True, text=True)
        if other.returncode == 0 or "holds 'wte' as F32 [64,16], expected F32 [64,24]" not in other.stderr:
            print(f"FAIL: upcycling from a model of another width: exit {other.returncode}, {other.stderr}")
            failures += 1
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
