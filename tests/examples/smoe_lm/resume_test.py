#!/usr/bin/env python3
"""ctest smoe_lm.resume: a run stopped half way (--stop-after) and resumed (--resume) ends with the same parameters,
optimiser moments and curves, bit for bit, as the run that was never stopped; for a policy with random masks
(dare-ca), dynamic merging, SMEAR's router and the dense model. Runs on a small WikiText-style directory this test
writes (so it also exercises that loader), with its own tokenizer cache. Also checks that resuming a checkpoint of
another configuration is refused with a message saying why.

usage: resume_test.py SMOE_LM_BINARY"""
import json
import os
import random
import subprocess
import sys
import tempfile


def write_corpus(directory):
    rng = random.Random(7)
    subjects = ["the expert", "a router", "the merged layer", "every token", "the base", "a segment"]
    verbs = ["merges", "routes", "drops", "keeps", "scales", "reads"]
    objects = ["the deltas", "its scores", "the curvature", "a mask", "the gradient", "two experts"]
    for part, lines in (("train", 1500), ("valid", 300), ("test", 300)):
        with open(os.path.join(directory, f"wiki.{part}.tokens"), "w") as f:
            f.write(" = Heading = \n\n")
            for _ in range(lines):
                f.write(f" {rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} . \n")


def tensors(path):
    """{name: bytes} of a safetensors file (metadata left out: it names the run's own paths)."""
    with open(path, "rb") as f:
        blob = f.read()
    length = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + length])
    data = blob[8 + length:]
    return {k: data[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in header.items() if k != "__metadata__"}


def curves(path):
    with open(path) as f:
        return [",".join(line.strip().split(",")[:7]) for line in f]  # the numbers, not the timings


def run(binary, args):
    result = subprocess.run([binary] + args, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"FAIL: {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def main():
    binary = sys.argv[1]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "wikitext")
        os.mkdir(data)
        write_corpus(data)
        common = ["--data", data, "--cache-dir", os.path.join(tmp, "cache"), "--vocab", "64", "--context", "16",
                  "--channels", "16", "--heads", "2", "--layers", "2", "--experts", "3", "--segment", "8",
                  "--batch", "4", "--steps", "12", "--warmup", "3", "--log-every", "2", "--eval-every", "4",
                  "--eval-batches", "2", "--checkpoint-every", "0", "--plot", "0", "--seed", "5"]
        for policy in ["dare-ca", "dynamic", "smear", "dense"]:
            a, b = os.path.join(tmp, policy + "-a"), os.path.join(tmp, policy + "-b")
            args = common + ["--policy", policy]
            run(binary, args + ["--out", a])
            run(binary, args + ["--out", b, "--stop-after", "6"])
            out = run(binary, args + ["--out", b, "--resume", os.path.join(b, "checkpoint.safetensors")])
            if "resumed from" not in out:
                print(f"FAIL {policy}: the resumed run did not say so:\n{out}")
                failures += 1
            ta, tb = tensors(os.path.join(a, "checkpoint.safetensors")), tensors(os.path.join(b, "checkpoint.safetensors"))
            differing = sorted(k for k in ta if ta[k] != tb.get(k))
            if set(ta) != set(tb) or differing:
                print(f"FAIL {policy}: tensors differ after resuming: {differing[:5]} (of {len(ta)})")
                failures += 1
            ca, cb = curves(os.path.join(a, "curves.csv")), curves(os.path.join(b, "curves.csv"))
            if ca != cb:
                print(f"FAIL {policy}: curves differ:\n" + "\n".join(ca) + "\n--\n" + "\n".join(cb))
                failures += 1
            else:
                print(f"ok {policy}: {len(ta)} tensors and {len(ca) - 1} curve rows identical after resuming at step 6")
        # A checkpoint of another model is refused, with the reason.
        other = subprocess.run([binary] + common + ["--policy", "ties", "--out", os.path.join(tmp, "x"), "--resume",
                                                    os.path.join(tmp, "dense-b", "checkpoint.safetensors")],
                               capture_output=True, text=True)
        if other.returncode == 0 or "holds a model configured" not in other.stderr:
            print(f"FAIL: resuming another model's checkpoint: exit {other.returncode}, stderr: {other.stderr}")
            failures += 1
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
