#!/usr/bin/env python3
"""ctest smoe_lm.resume: a run stopped half way (--stop-after), between two progress lines, and resumed (--resume)
ends with the same parameters, optimiser moments and curves, bit for bit, as the run that was never stopped (the
first line after the resume averages the losses of steps on both sides of it); for a policy with random masks
(dare-ca), dynamic merging, SMEAR's router and the dense model. Runs on a small WikiText-style directory this test
writes (so it also exercises that loader), with its own tokenizer cache. Also checks that resuming a checkpoint of
another configuration, or one trained with another tokenizer, is refused with a message saying why.

usage: resume_test.py SMOE_LM_BINARY"""
import os
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # importing tiny_runs leaves no __pycache__ in the source tree
from tiny_runs import run, run_differences, tiny_model  # noqa: E402


def main():
    binary = sys.argv[1]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        common = tiny_model(tmp) + ["--steps", "12", "--warmup", "3", "--log-every", "2", "--eval-every", "4",
                                    "--eval-batches", "2", "--checkpoint-every", "0", "--seed", "5"]
        for policy in ["dare-ca", "dynamic", "smear", "dense"]:
            a, b = os.path.join(tmp, policy + "-a"), os.path.join(tmp, policy + "-b")
            args = common + ["--policy", policy]
            first = run([binary] + args + ["--out", a], policy)
            stopped = run([binary] + args + ["--out", b, "--stop-after", "7"], policy + ", stopped")
            out = run([binary] + args + ["--out", b, "--resume", os.path.join(b, "checkpoint.safetensors")],
                      policy + ", resumed")
            if first is None or stopped is None or out is None:
                failures += 1
                continue
            if "resumed from" not in out:
                print(f"FAIL {policy}: the resumed run did not say so:\n{out}")
                failures += 1
            problems, tensors, rows = run_differences(a, b)
            if problems:
                print(f"FAIL {policy}: after resuming at step 7, " + "; ".join(problems))
                failures += 1
            else:
                print(f"ok {policy}: {tensors} tensors and {rows} curve rows identical after resuming at step 7")
        # A checkpoint of another model is refused, with the reason.
        other = subprocess.run([binary] + common + ["--policy", "ties", "--out", os.path.join(tmp, "x"), "--resume",
                                                    os.path.join(tmp, "dense-b", "checkpoint.safetensors")],
                               capture_output=True, text=True)
        if other.returncode == 0 or "holds a model configured" not in other.stderr:
            print(f"FAIL: resuming another model's checkpoint: exit {other.returncode}, stderr: {other.stderr}")
            failures += 1
        # A checkpoint trained with another tokenizer (a corpus one line longer trains another one) is refused.
        data = common[common.index("--data") + 1]
        changed = os.path.join(tmp, "wikitext-changed")
        shutil.copytree(data, changed)
        with open(os.path.join(changed, "wiki.train.tokens"), "a") as f:
            f.write(" the router reads a new line . \n")
        retokenized = list(common)
        retokenized[retokenized.index("--data") + 1] = changed
        other = subprocess.run([binary] + retokenized + ["--policy", "dense", "--out", os.path.join(tmp, "y"), "--resume",
                                                         os.path.join(tmp, "dense-b", "checkpoint.safetensors")],
                               capture_output=True, text=True)
        if other.returncode == 0 or "was trained with the tokenizer" not in other.stderr:
            print(f"FAIL: resuming with another tokenizer: exit {other.returncode}, stderr: {other.stderr}")
            failures += 1
        else:
            print("ok: checkpoints of another model or another tokenizer are refused")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
