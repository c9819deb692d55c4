#!/usr/bin/env python3
"""ctest examples.smoe_lm.disk: a run that cannot write its checkpoint (the file-size limit RLIMIT_FSIZE set below
a checkpoint's size, as a full disk would refuse it) stops with a clear error and exit 1, leaves the previous
checkpoint byte for byte as it was and no temporary file beside it; resumed from that checkpoint once there is
room, it ends bit for bit where the uninterrupted run does.

usage: disk_test.py SMOE_LM_BINARY"""
import os
import resource
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # importing tiny_runs leaves no __pycache__ in the source tree
from tiny_runs import run, run_differences, tiny_model  # noqa: E402


def main():
    binary = sys.argv[1]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        args = [binary] + tiny_model(tmp) + ["--steps", "12", "--warmup", "3", "--log-every", "2", "--eval-every", "4",
                                             "--eval-batches", "2", "--checkpoint-every", "4", "--seed", "6",
                                             "--policy", "ties-ca"]
        whole, out = os.path.join(tmp, "whole"), os.path.join(tmp, "limited")
        checkpoint = os.path.join(out, "checkpoint.safetensors")
        if run(args + ["--out", whole], "the uninterrupted run") is None or \
                run(args + ["--out", out, "--stop-after", "5"], "the run stopped at step 5") is None:
            sys.exit(1)
        with open(checkpoint, "rb") as f:
            before = f.read()
        limit = len(before) // 2  # the curves and the configuration fit, a checkpoint does not

        def limited():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

        refused = subprocess.run(args + ["--out", out, "--resume", checkpoint], capture_output=True, text=True,
                                 preexec_fn=limited)
        with open(checkpoint, "rb") as f:
            after = f.read()
        expected = ["smoe_lm: error: writing", "failed: File too large", "checkpoint.safetensors' is left as it was"]
        missing = [e for e in expected if e not in refused.stderr]
        if refused.returncode != 1 or missing:
            print(f"FAIL: past the limit the run exited {refused.returncode} with stderr:\n{refused.stderr}\n"
                  f"missing: {missing}")
            failures += 1
        elif after != before or os.path.exists(checkpoint + ".tmp"):
            print(f"FAIL: the checkpoint changed ({after != before}) or a temporary is left "
                  f"({os.path.exists(checkpoint + '.tmp')})")
            failures += 1
        else:
            print(f"ok: a {len(before)}-byte checkpoint past a {limit}-byte limit: exit 1, "
                  f"'{refused.stderr.strip().splitlines()[-1]}'; the step-5 checkpoint unchanged, no temporary left")
        if run(args + ["--out", out, "--resume", checkpoint], "the resumed run") is None:
            sys.exit(1)
        problems, tensors, rows = run_differences(whole, out)
        if problems:
            print("FAIL: after the refused write and a resume, " + "; ".join(problems))
            failures += 1
        else:
            print(f"ok: resumed with room, {tensors} tensors and {rows} curve rows identical to the uninterrupted run")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
