#!/usr/bin/env python3
"""ctest examples.smoe_lm.signals: SIGTERM and SIGINT end a run after the step under way, with a checkpoint of that
step and exit status 128 + the signal; resuming it ends with the same parameters, optimiser moments and curves, bit
for bit, as the run that was never stopped. The signal arrives once a progress line is out, so the stop falls
between two lines (every 5 steps) or on one, and the checkpoint carries the losses summed since the last line. A
second SIGINT, while a run still works through its step, ends it at once.

usage: signals_test.py SMOE_LM_BINARY"""
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # importing tiny_runs leaves no __pycache__ in the source tree
from tiny_runs import read_safetensors, run, run_differences, tiny_model  # noqa: E402


def signalled(command, sig, after_lines, delay):
    """Runs `command`, sends `sig` `delay` seconds after `after_lines` progress lines are out; (exit status, output)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, lines = [], 0
    for line in process.stdout:
        output.append(line)
        if line.startswith("step"):
            lines += 1
            if lines == after_lines:
                time.sleep(delay)
                process.send_signal(sig)
    return process.wait(), "".join(output)


def main():
    binary = sys.argv[1]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        args = [binary] + tiny_model(tmp) + ["--steps", "400", "--warmup", "10", "--log-every", "5", "--eval-every",
                                             "100", "--eval-batches", "1", "--checkpoint-every", "0", "--seed", "3",
                                             "--policy", "dare-ca"]
        whole = os.path.join(tmp, "whole")
        if run(args + ["--out", whole], "the uninterrupted run") is None:
            sys.exit(1)
        # Sent as a line comes out, or a few milliseconds later (a step of this model takes one or two), a signal
        # stops the run on that line or a step or two after it: the step is printed, and either is checked.
        for sig, after, delay in ((signal.SIGTERM, 3, 0.0), (signal.SIGINT, 10, 0.003)):
            name = signal.Signals(sig).name
            out = os.path.join(tmp, name)
            status, text = signalled(args + ["--out", out], sig, after, delay)
            checkpoint = os.path.join(out, "checkpoint.safetensors")
            if status != 128 + sig or f"stopped by {name}" not in text or not os.path.exists(checkpoint):
                print(f"FAIL {name}: exit {status} (expected {128 + sig}), output:\n{text[-2000:]}")
                failures += 1
                continue
            stopped_at = int(read_safetensors(checkpoint)[0]["step"])
            if not 0 < stopped_at < 400:
                print(f"FAIL {name}: the checkpoint is of step {stopped_at}")
                failures += 1
                continue
            if run(args + ["--out", out, "--resume", checkpoint], f"{name}, resumed") is None:
                failures += 1
                continue
            problems, tensors, rows = run_differences(whole, out)
            if problems:
                print(f"FAIL {name}: after resuming at step {stopped_at}, " + "; ".join(problems))
                failures += 1
            else:
                print(f"ok {name}: stopped after step {stopped_at} with exit {status}; after resuming, "
                      f"{tensors} tensors and {rows} curve rows identical to the uninterrupted run")
        # Two signals: the first is taken (the process then no longer catches SIGINT: /proc's SigCgt), the second
        # finds the default action and ends the process at once. A run that ends its step before the second can be
        # sent is tried again.
        for attempt in range(3):
            process = subprocess.Popen(args + ["--out", os.path.join(tmp, "twice")], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
            for line in process.stdout:
                if line.startswith("step"):
                    process.send_signal(signal.SIGINT)
                    break
            sent = False
            while process.poll() is None and not sent:
                try:
                    with open(f"/proc/{process.pid}/status") as f:
                        caught = int(next(l for l in f if l.startswith("SigCgt:")).split()[1], 16)
                except (OSError, StopIteration):
                    break
                if not caught & (1 << (signal.SIGINT - 1)):
                    process.send_signal(signal.SIGINT)
                    sent = True
            process.stdout.read()
            status = process.wait()
            if sent:
                break
        if status != -signal.SIGINT:
            print(f"FAIL: a second SIGINT while the first was being served gave exit {status}, expected death by SIGINT")
            failures += 1
        else:
            print(f"ok: a second SIGINT ends the run at once (attempt {attempt + 1})")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
