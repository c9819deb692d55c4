#!/usr/bin/env python3
"""ctest examples.<trainer>.data_parallel: the trainer on two processes of one machine (mpirun -np 2, loopback)
trains the model one process trains.

- Run to run: two runs on two processes end with the same checkpoint, every tensor bit for bit, and the same curves
  (camex sums across ranks in rank order; MPI only moves bytes), the second sending each block's gradients apart
  while the backward goes on (--bucket-mb 0), the first all of them in one bucket.
- Against one process, on an odd batch (shares of unequal size and weight), with the routers' balancing loss off
  (--aux 0: it is a statistic of the batch each process sees, so with it on two processes optimise a slightly
  different objective, as every data-parallel trainer's per-device balancing loss does): one step's loss agrees
  within 1e-6 relative and every gradient within 1e-4 of the largest (--dump-step: float sums over the batch taken
  in another order and another grouping); after 8 steps the training losses agree within 1e-4 relative and every
  parameter within 1e-3 of the tensor's largest entry (Adam divides by the root of the second moment, which
  magnifies rounding in gradients near zero).
- Resume: a run of two processes stopped half way and resumed on two ends bit for bit where the uninterrupted run
  does; its checkpoint resumes on one process too.
- The optimiser sharded across the processes (--shard-optimizer, ZeRO stage 1): the run ends bit for bit as the
  unsharded one, rank 0 holding about half the moments; stopped and resumed sharded (in a bucket per block),
  likewise.
- A batch smaller than the process count is a usage error (exit 2) naming --batch.

usage: data_parallel_test.py lm|vit MPIEXEC TRAINER_BINARY"""
import os
import re
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # importing the helpers leaves no __pycache__ in the source tree
sys.path.insert(0, os.path.join(here, "..", "..", "smoe_vit"))
from tiny_images import float32_tensors, read_safetensors, run_differences, tiny_options  # noqa: E402


def worst_relative(a, b, prefix):
    """The largest |a - b| over a tensor's largest |a|, over every tensor named prefix..., and that tensor."""
    worst, where = 0.0, None
    for name, x in a.items():
        if not name.startswith(prefix):
            continue
        y = b[name]
        scale = max(max(abs(v) for v in x), 1e-30)
        d = max(abs(u - v) for u, v in zip(x, y)) / scale
        if d > worst:
            worst, where = d, name
    return worst, where


def curve_losses(path):
    with open(path) as f:
        rows = [line.strip().split(",") for line in f][1:]
    return [float(r[1]) for r in rows]


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("lm", "vit"):
        sys.exit(__doc__.split("usage: ")[1])
    kind, mpiexec, binary = sys.argv[1:]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    # Loopback on one machine: shared memory between the two, no binding (ctest runs tests side by side), one
    # OpenMP thread each.
    two = [mpiexec, "-np", "2", "--oversubscribe", "--bind-to", "none", "--mca", "pml", "ob1", "--mca", "btl", "self,vader",
           "--mca", "btl_vader_single_copy_mechanism", "none", "-x", "OMP_NUM_THREADS=1", "-x", "OMPI_ALLOW_RUN_AS_ROOT",
           "-x", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"]
    failures = 0

    def check(ok, message):
        nonlocal failures
        print(("ok " if ok else "FAIL ") + message)
        failures += 0 if ok else 1

    def train(launcher, options, out, what):
        nonlocal failures
        result = subprocess.run(launcher + [binary] + options + ["--out", out], capture_output=True, text=True, env=env)
        if result.returncode != 0:
            print(f"FAIL {what}: exit {result.returncode}\n{result.stdout}\n{result.stderr}")
            failures += 1
            return None
        return result.stdout

    with tempfile.TemporaryDirectory() as tmp:
        policy = "dare-ca" if kind == "lm" else "ties-ca"  # random masks and router noise: the draws must line up
        base = ["--steps", "8", "--warmup", "2", "--log-every", "1", "--eval-every", "4", "--eval-batches", "2",
                "--seed", "5", "--checkpoint-every", "0", "--policy", policy]
        options = tiny_options(kind, tmp, base)
        out = lambda name: os.path.join(tmp, name)  # noqa: E731

        # Run to run, and stopped and resumed, on two processes.
        a = train(two, options, out("two-a"), "two processes")
        b = train(two, options + ["--bucket-mb", "0"], out("two-b"), "two processes again, a bucket per block")
        if a is not None and b is not None:
            check("data parallel: 2 processes" in a, "the run says it is data parallel on 2 processes")
            buckets = lambda text: int(re.search(r"a step in ([0-9]+) buckets", text).group(1))  # noqa: E731
            check(buckets(a) == 1 and buckets(b) > 2, f"{buckets(a)} bucket by default, {buckets(b)} with --bucket-mb 0")
            problems, tensors, rows = run_differences(out("two-a"), out("two-b"))
            check(not problems, f"two runs on two processes end alike ({tensors} tensors, {rows} curve rows) " +
                  "; ".join(problems))
        stopped = train(two, options + ["--stop-after", "4"], out("two-stopped"), "two processes, stopped")
        resumed = train(two, options + ["--resume", out("two-stopped/checkpoint.safetensors")], out("two-stopped"),
                        "two processes, resumed")
        if a is not None and stopped is not None and resumed is not None:
            problems, tensors, rows = run_differences(out("two-a"), out("two-stopped"))
            check(not problems, "stopped after step 4 and resumed on two processes, the run ends as the uninterrupted "
                  "one " + "; ".join(problems))

        # The optimiser sharded across the two (ZeRO stage 1, --shard-optimizer): the same run bit for bit, with half
        # the moments on each process; stopped and resumed sharded, likewise.
        sharded = train(two, options + ["--shard-optimizer"], out("two-sharded"), "two processes, --shard-optimizer")
        if a is not None and sharded is not None:
            problems, tensors, rows = run_differences(out("two-a"), out("two-sharded"))
            check(not problems, "with the optimiser sharded the run ends as the unsharded one " + "; ".join(problems))
            held = lambda text: float(re.search(r"rank 0 holds ([0-9.]+) MB of AdamW moments", text).group(1))  # noqa: E731
            check(held(sharded) <= 0.6 * held(a), f"rank 0 holds {held(sharded)} MB of moments sharded, {held(a)} MB not")
        stopped_sharded = train(two, options + ["--shard-optimizer", "--bucket-mb", "0", "--stop-after", "4"],
                                out("sharded-stopped"), "two processes sharded, stopped")
        if stopped_sharded is not None and train(two, options + ["--shard-optimizer", "--bucket-mb", "0", "--resume",
                                                                 out("sharded-stopped/checkpoint.safetensors")],
                                                 out("sharded-stopped"), "two processes sharded, resumed") is not None:
            problems, tensors, rows = run_differences(out("two-a"), out("sharded-stopped"))
            check(not problems, "stopped after step 4 and resumed with the optimiser sharded, the run ends as the "
                  "uninterrupted one " + "; ".join(problems))

        # Against one process, the balancing loss off, on an odd batch: the two shares differ, and so their weights.
        plain = tiny_options(kind, tmp, base + ["--aux", "0", "--batch", "5" if kind == "lm" else "7"])
        one = train([], plain, out("one"), "one process")
        dual = train(two, plain, out("two"), "two processes, --aux 0")
        if one is not None and dual is not None:
            la, lb = curve_losses(out("one/curves.csv")), curve_losses(out("two/curves.csv"))
            worst = max(abs(x - y) / abs(x) for x, y in zip(la, lb)) if len(la) == len(lb) else float("inf")
            check(worst <= 1e-4, f"8 steps' training losses of one and two processes within {worst:.2e} relative (<= 1e-4)")
            d, where = worst_relative(float32_tensors(out("one/checkpoint.safetensors")),
                                      float32_tensors(out("two/checkpoint.safetensors")), "")
            check(d <= 1e-3, f"after 8 steps every parameter and moment within {d:.2e} of its tensor's largest (<= 1e-3; "
                  f"worst {where})")
        dumps = {}
        for name, launcher in (("one", []), ("two", two)):
            path = out(f"dump-{name}.safetensors")
            if train(launcher, plain + ["--dump-step", path], out(f"dump-{name}"), f"--dump-step on {name}") is not None:
                dumps[name] = path
        if len(dumps) == 2:
            g1, g2 = float32_tensors(dumps["one"]), float32_tensors(dumps["two"])
            d, where = worst_relative(g1, g2, "grad/")
            check(d <= 1e-4, f"one step's gradients of one and two processes within {d:.2e} of each tensor's largest "
                  f"(<= 1e-4; worst {where})")
            m1, m2 = read_safetensors(dumps["one"])[0], read_safetensors(dumps["two"])[0]
            c1, c2 = float(m1["cross_entropy"]), float(m2["cross_entropy"])
            check(abs(c1 - c2) <= 1e-6 * abs(c1) and m2.get("ranks") == "2",
                  f"one step's loss {c1:.9f} on one process, {c2:.9f} on two (ranks {m2.get('ranks')})")
        # Resumed on one process from the checkpoint of two.
        if stopped is not None:
            single = train([], options + ["--resume", out("two-stopped/checkpoint.safetensors")], out("resumed-one"),
                           "one process resuming two's checkpoint")
            check(single is not None and "resumed from" in single, "a checkpoint of two processes resumes on one")

        # A batch smaller than the process count.
        small = subprocess.run(two + [binary] + tiny_options(kind, tmp, ["--batch", "1"]) + ["--out", out("small")],
                               capture_output=True, text=True, env=env)
        expected = "option --batch: expected at least one item for each of the 2 processes, given 1"
        check(small.returncode != 0 and expected in small.stderr,
              f"--batch 1 on two processes is refused (exit {small.returncode}): {small.stderr.strip()[:200]}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
