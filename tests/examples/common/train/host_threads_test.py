#!/usr/bin/env python3
"""ctest examples.<trainer>.host_threads: a step's numbers do not depend on how many threads run it, so the trainer
may change its width while it runs (--host-threads auto: camex::AdaptiveThreads). A tiny model trained on all the
OpenMP threads and on all of them but one ends with the same checkpoint, every tensor bit for bit, and the same
curves; on a build without OpenMP both runs use the one thread they have, and still must agree. An unknown width
is refused as a usage error (exit 2), naming the option and the choices.

usage: host_threads_test.py lm|vit TRAINER_BINARY"""
import os
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # importing the helpers leaves no __pycache__ in the source tree
sys.path.insert(0, os.path.join(here, "..", "..", "smoe_vit"))
from tiny_images import kind_and_trainer, run, run_differences, tiny_options  # noqa: E402


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("lm", "vit"):
        sys.exit(__doc__.split("usage: ")[1])
    kind, binary = sys.argv[1], sys.argv[2]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        options = tiny_options(kind, tmp, ["--steps", "12", "--warmup", "2", "--log-every", "3", "--eval-every", "6",
                                           "--eval-batches", "2", "--seed", "5"])
        outs = {}
        for width in ("all", "all-but-one"):
            outs[width] = os.path.join(tmp, width)
            if run([binary] + options + ["--host-threads", width, "--out", outs[width]], width) is None:
                failures += 1
        if not failures:
            problems, tensors, rows = run_differences(outs["all"], outs["all-but-one"])
            for p in problems:
                print(f"FAIL all threads against all but one: {p}")
            failures += len(problems)
            if not problems:
                print(f"ok: all threads and all but one end alike ({tensors} tensors, {rows} curve rows)")
        bad = subprocess.run([binary] + options + ["--host-threads", "half", "--out", os.path.join(tmp, "bad")],
                             capture_output=True, text=True)
        expected = "option --host-threads: expected auto, all or all-but-one, given 'half'"
        if bad.returncode != 2 or expected not in bad.stderr:
            print(f"FAIL --host-threads half: exit {bad.returncode}, expected 2 and '{expected}':\n{bad.stderr}")
            failures += 1
        else:
            print("ok: --host-threads half is refused with the choices")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
