#!/usr/bin/env python3
"""The check that a restructuring of the trainers is a pure refactor: train the language model with every policy
(and both routing granularities, and upcycling) on a tiny WikiText-style corpus, and one longer run on the Brown
corpus at the demo's size, then digest every tensor of each final checkpoint (every parameter and both AdamW
moments; SHA-256 of its bytes). `--write FILE` records the digests; `--compare FILE` trains again and names every
tensor whose bytes differ. The bits hold on one machine, backend and thread count (OMP_NUM_THREADS=2 is set here),
so the digests of another machine are not comparable: record the baseline where you compare.

usage: checkpoint_digests.py SMOE_LM_BINARY (--write FILE | --compare FILE) [--brown-steps N]"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # importing tiny_runs leaves no __pycache__ in the source tree
from tiny_runs import read_safetensors, run, tiny_model  # noqa: E402

POLICIES = ["dense", "smoe", "smear", "domain", "ties", "ties-ca", "dare", "dare-ca", "ca", "dynamic"]


def digests(checkpoint):
    meta, tensors = read_safetensors(checkpoint)
    return {"step": meta.get("step"), "tensors": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(tensors.items())}}


def train_all(binary, work, brown_steps):
    """{run name: digests} for every run of the check."""
    common = tiny_model(work) + ["--steps", "10", "--warmup", "2", "--log-every", "5", "--eval-every", "5",
                                 "--eval-batches", "2", "--checkpoint-every", "0", "--seed", "11"]
    runs = {}
    for policy in POLICIES:
        for routing in ["segment", "sequence"]:
            if policy == "dense" and routing == "sequence":
                continue
            runs[f"tiny/{policy}/{routing}"] = common + ["--policy", policy, "--routing", routing]
    out = {}
    for name, args in runs.items():
        directory = os.path.join(work, name.replace("/", "-"))
        if run([binary] + args + ["--out", directory], name) is None:
            sys.exit(1)
        out[name] = digests(os.path.join(directory, "checkpoint.safetensors"))
        print(f"trained {name}", flush=True)
    dense = os.path.join(work, "tiny-dense-segment", "checkpoint.safetensors")
    for policy in ["ties-ca", "dynamic"]:
        name, directory = f"tiny/{policy}/upcycled", os.path.join(work, f"up-{policy}")
        if run([binary] + common + ["--policy", policy, "--upcycle-from", dense, "--out", directory], name) is None:
            sys.exit(1)
        out[name] = digests(os.path.join(directory, "checkpoint.safetensors"))
        print(f"trained {name}", flush=True)
    if brown_steps > 0:
        name, directory = f"brown/ties-ca/{brown_steps}", os.path.join(work, "brown")
        if run([binary, "--policy", "ties-ca", "--steps", str(brown_steps), "--warmup", "5", "--eval-every",
                str(brown_steps), "--log-every", "10", "--checkpoint-every", "0", "--plot", "0", "--out", directory],
               name) is None:
            sys.exit(1)
        out[name] = digests(os.path.join(directory, "checkpoint.safetensors"))
        print(f"trained {name}", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write")
    mode.add_argument("--compare")
    parser.add_argument("--brown-steps", type=int, default=30)
    args = parser.parse_args()
    os.environ.update(OMP_NUM_THREADS="2", OMP_PROC_BIND="spread", OMP_PLACES="threads")
    with tempfile.TemporaryDirectory() as work:
        now = train_all(args.binary, work, args.brown_steps)
    if args.write:
        with open(args.write + ".tmp", "w") as f:
            json.dump(now, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(args.write + ".tmp", args.write)
        print(f"wrote the digests of {sum(len(r['tensors']) for r in now.values())} tensors in {len(now)} runs to {args.write}")
        return
    with open(args.compare) as f:
        before = json.load(f)
    failures = 0
    for name, recorded in before.items():
        if name not in now:
            print(f"FAIL {name}: not trained now")
            failures += 1
            continue
        a, b = recorded["tensors"], now[name]["tensors"]
        differing = sorted(k for k in a if a[k] != b.get(k))
        missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        if differing or extra or recorded["step"] != now[name]["step"]:
            print(f"FAIL {name}: {len(differing)} of {len(a)} tensors differ ({differing[:4]}), missing {missing[:4]}, "
                  f"new {extra[:4]}")
            failures += 1
        else:
            print(f"ok {name}: {len(a)} tensors identical")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
