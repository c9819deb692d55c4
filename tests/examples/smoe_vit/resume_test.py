#!/usr/bin/env python3
"""ctest smoe_vit.resume: a run stopped half way (--stop-after), between two progress lines, and resumed (--resume)
ends with the same parameters, optimiser moments and curves, bit for bit, as the run that was never stopped (the
epochs' order and the augmentation are keyed by (seed, step), so nothing of the loader is saved; the checkpoint keeps
the progress line's running sums); for the dense model, TIES-CA per image, DARE-CA per token (random masks), SMEAR
with experts in the last block and dynamic merging in every second block. Also checks that a checkpoint of another
model or another dataset is refused with the reason, and that the run writes its confusion matrix. Runs on a small
Fashion-MNIST-shaped dataset this test writes. The dense run is profiled (--profile), which must change no number and
report the step's time by kernel category.

usage: resume_test.py SMOE_VIT_BINARY"""
import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_images import run, run_differences, tiny_vit, with_options  # noqa: E402


def main():
    binary = sys.argv[1]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        common = tiny_vit(tmp) + ["--steps", "12", "--checkpoint-every", "0", "--seed", "5"]
        runs = {"dense": ["--policy", "dense"],
                "ties-ca-image": ["--policy", "ties-ca", "--routing", "image"],
                "dare-ca-token": ["--policy", "dare-ca", "--routing", "token"],
                "smear-last-1": ["--policy", "smear", "--moe-layers", "last-1"],
                "dynamic-every-2": ["--policy", "dynamic", "--moe-layers", "every-2", "--layers", "4"]}
        for name, extra in runs.items():
            a, b = os.path.join(tmp, name + "-a"), os.path.join(tmp, name + "-b")
            args, rest = with_options(common, extra)
            args += rest
            # The dense run is also profiled: timing the kernels changes no number.
            profiled = ["--profile", "1"] if name == "dense" else []
            first = run([binary] + args + profiled + ["--out", a], name)
            stopped = run([binary] + args + ["--out", b, "--stop-after", "7"], name + ", stopped")
            out = run([binary] + args + ["--out", b, "--resume", os.path.join(b, "checkpoint.safetensors")], name + ", resumed")
            if first is None or stopped is None or out is None:
                failures += 1
                continue
            problems, tensors, rows = run_differences(a, b)
            if problems:
                print(f"FAIL {name}: after resuming at step 7, " + "; ".join(problems))
                failures += 1
            elif "test accuracy" not in first or not os.path.exists(os.path.join(a, "confusion.csv")):
                print(f"FAIL {name}: no test accuracy or confusion matrix:\n{first}")
                failures += 1
            elif profiled and ("where the step's time goes" not in first or "GEMM" not in first or
                              not os.path.exists(os.path.join(a, "kernels.csv"))):
                print(f"FAIL {name}: --profile printed no report by kernel category or wrote no kernels.csv:\n{first}")
                failures += 1
            else:
                print(f"ok {name}: {tensors} tensors and {rows} curve rows identical after resuming at step 7")
        with open(os.path.join(tmp, "dense-a", "confusion.csv")) as f:
            rows = f.read().splitlines()
        if len(rows) != 11 or sum(int(v) for row in rows[1:] for v in row.split(",")[1:]) != 60:
            print(f"FAIL: the confusion matrix does not count the 60 test images:\n" + "\n".join(rows))
            failures += 1
        # A checkpoint of another model, or of another dataset (images of another size), is refused with the reason.
        other = subprocess.run([binary] + common + ["--policy", "ties", "--out", os.path.join(tmp, "x"), "--resume",
                                                    os.path.join(tmp, "dense-b", "checkpoint.safetensors")],
                               capture_output=True, text=True)
        if other.returncode == 0 or "holds a model configured" not in other.stderr:
            print(f"FAIL: resuming another model's checkpoint: exit {other.returncode}, {other.stderr}")
            failures += 1
        checkpoint = os.path.join(tmp, "dense-b", "checkpoint.safetensors")
        with open(checkpoint, "rb") as f:
            blob = bytearray(f.read())
        text = blob.decode("latin-1")
        at = text.find("Fashion-MNIST 28x28")
        if at < 0:
            print("FAIL: the checkpoint does not record its dataset")
            failures += 1
        else:
            blob[at:at + 19] = b"Fashion-MNIST 14x14"
            forged = os.path.join(tmp, "other-dataset.safetensors")
            with open(forged, "wb") as f:
                f.write(blob)
            refused = subprocess.run([binary] + common + ["--policy", "dense", "--out", os.path.join(tmp, "y"), "--resume",
                                                          forged], capture_output=True, text=True)
            if refused.returncode == 0 or "was trained on 'Fashion-MNIST 14x14'" not in refused.stderr:
                print(f"FAIL: resuming a checkpoint of another dataset: exit {refused.returncode}, {refused.stderr}")
                failures += 1
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
