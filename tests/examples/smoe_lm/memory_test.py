#!/usr/bin/env python3
"""ctest examples.smoe_lm.memory: the trainer's resident memory stays flat after its first steps. A tiny model
trains 3000 steps (validation every 300, a checkpoint every 600) while benchmarks/memory.py samples its resident
set every 20 ms; after step 700 (past the first checkpoint) it may grow by at most 1 MiB (the long run on the demo
model is in docs/reliability.md).

usage: memory_test.py SMOE_LM_BINARY"""
import os
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # importing the helpers leaves no __pycache__ in the source tree
sys.path.insert(0, os.path.join(here, "..", "..", "..", "benchmarks"))
import memory  # noqa: E402
from tiny_runs import tiny_model  # noqa: E402


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        memory.main([binary, "--steps", "3000", "--settle", "700", "--interval", "0.02", "--max-growth-mib", "1",
                     "--out", os.path.join(tmp, "memory"), "--"] + tiny_model(tmp) + ["--policy", "dare-ca"])


if __name__ == "__main__":
    main()
