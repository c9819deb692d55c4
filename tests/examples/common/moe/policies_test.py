#!/usr/bin/env python3
"""ctest examples.<trainer>.policies (and .policies.sanitized): every policy of the registry (policies.json) trains
a tiny model in the trainer for a few steps, writes a checkpoint when stopped half way, and resumes from it to the
end, each a clean exit. On the trainer built with the sanitizers it is the short run of every policy family under
AddressSanitizer (leaks included) and UndefinedBehaviorSanitizer: any report fails the run.

usage: policies_test.py lm|vit TRAINER_BINARY"""
import json
import os
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # importing the helpers leaves no __pycache__ in the source tree
sys.path.insert(0, os.path.join(here, "..", "..", "smoe_vit"))
from tiny_images import kind_and_trainer, run, tiny_options  # noqa: E402


def main():
    kind, binary = kind_and_trainer(__doc__.split("usage: ")[1])
    with open(os.path.join(here, "..", "..", "..", "..", "examples", "common", "moe", "policies.json")) as f:
        policies = [p["name"] for p in json.load(f)["policies"]]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        options = tiny_options(kind, tmp, ["--steps", "4", "--warmup", "1", "--log-every", "1", "--eval-every", "2",
                                           "--eval-batches", "1", "--checkpoint-every", "0", "--seed", "3"])
        for policy in policies:
            out = os.path.join(tmp, policy)
            args = [binary] + options + ["--policy", policy, "--out", out]
            stopped = run(args + ["--stop-after", "2"], policy + ", stopped after step 2")
            resumed = stopped is not None and run(args + ["--resume", os.path.join(out, "checkpoint.safetensors")],
                                                  policy + ", resumed")
            if not resumed:
                failures += 1
            elif "resumed from" not in resumed:
                print(f"FAIL {policy}: the resumed run did not say so:\n{resumed}")
                failures += 1
            else:
                print(f"ok {policy}: trained, stopped with a checkpoint and resumed to the end")
    print(f"{len(policies) - failures} of {len(policies)} policies ran cleanly")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
