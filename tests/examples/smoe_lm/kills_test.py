#!/usr/bin/env python3
"""ctest examples.smoe_lm.kills: a run killed with SIGKILL at random moments, at least 20 times, each time started
again from its last complete checkpoint (from scratch while it has none), ends with the same parameters, optimiser
moments and curves, bit for bit, as the run that was never killed. A checkpoint is written every step, so many of
the kills land inside a checkpoint's writing (they leave its temporary file behind: counted, at least 3 required);
progress lines come every 7 steps, so most resumes fall between two of them. The kill times come from a fixed seed;
where each lands depends on the machine's speed, which is the point.

usage: kills_test.py SMOE_LM_BINARY"""
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # importing tiny_runs leaves no __pycache__ in the source tree
from tiny_runs import read_safetensors, run, run_differences, tiny_model  # noqa: E402

KILLS, IN_WRITES, MAX_ATTEMPTS = 20, 3, 200


def main():
    binary = sys.argv[1]
    rng = random.Random(19)
    with tempfile.TemporaryDirectory() as tmp:
        args = [binary] + tiny_model(tmp) + ["--steps", "600", "--warmup", "10", "--log-every", "7", "--eval-every",
                                             "150", "--eval-batches", "1", "--checkpoint-every", "1", "--seed", "4",
                                             "--policy", "dare-ca"]
        whole = os.path.join(tmp, "whole")
        began = time.monotonic()
        if run(args + ["--out", whole], "the uninterrupted run") is None:
            sys.exit(1)
        duration = time.monotonic() - began
        out = os.path.join(tmp, "killed")
        checkpoint = os.path.join(out, "checkpoint.safetensors")
        kills, in_writes, steps_at_kill, finished = 0, 0, [], False
        for _ in range(MAX_ATTEMPTS):
            resume = ["--resume", checkpoint] if os.path.exists(checkpoint) else []
            started = time.time_ns()
            process = subprocess.Popen(args + ["--out", out] + resume, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if kills < KILLS or in_writes < IN_WRITES:
                try:
                    process.wait(timeout=rng.uniform(0.01, duration / 25))
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
            status = process.wait()
            error = process.stderr.read().decode()
            if status == 0:
                finished = True
                break
            if status != -signal.SIGKILL:
                print(f"FAIL: attempt after {kills} kills exited {status}:\n{error}")
                sys.exit(1)
            kills += 1
            # A temporary file this attempt wrote to (one an earlier kill left may still lie there, older).
            if os.path.exists(checkpoint + ".tmp") and os.stat(checkpoint + ".tmp").st_mtime_ns >= started:
                in_writes += 1
            steps_at_kill.append(int(read_safetensors(checkpoint)[0]["step"]) if os.path.exists(checkpoint) else 0)
        if not finished or kills < KILLS or in_writes < IN_WRITES:
            print(f"FAIL: {kills} kills ({in_writes} inside a checkpoint's writing) in {MAX_ATTEMPTS} attempts, "
                  f"finished: {finished}")
            sys.exit(1)
        problems, tensors, rows = run_differences(whole, out)
        if problems:
            print(f"FAIL: after {kills} kills (last complete checkpoints at steps {steps_at_kill}): " + "; ".join(problems))
            sys.exit(1)
        print(f"ok: {kills} kills, {in_writes} of them inside a checkpoint's writing, last complete checkpoints at "
              f"steps {steps_at_kill}; {tensors} tensors and {rows} curve rows identical to the uninterrupted run")


if __name__ == "__main__":
    main()
