"""The PyTorch side of benchmarks/run: the same operations as camex's benchmark cases, same shapes, same thread
count, timed the same way (median of repetitions). Prints JSON on stdout.

Run by /usr/bin/python3 with Debian's python3-torch; the BLAS torch actually loaded is reported, because without
libopenblas0-pthread torch silently uses the reference BLAS and every comparison flatters camex.
"""
import argparse
import json
import re
import statistics
import sys
import time

import torch


def loaded_blas():
    """The BLAS shared objects mapped into this process (what torch really calls)."""
    libs = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if re.search(r"lib(open)?blas|libmkl|libblis", path):
                libs.add(path)
    return sorted(libs)


def blas_config_line():
    for line in torch.__config__.show().splitlines():
        if "BLAS" in line:
            return line.strip()
    return "no BLAS line in torch.__config__.show()"


def median_seconds(fn, min_seconds=0.5, min_reps=5):
    fn()  # warm-up: thread pool, page faults
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def soft_merge_cases():
    n, p = 8, 1 << 22
    gen = torch.Generator().manual_seed(2025)
    w = torch.rand(n, p, generator=gen) * 2 - 1
    for b in (1, 4, 16, 32):
        shape = f"/N={n}/P={p}/B={b}"
        s = torch.rand(b, n, generator=gen)
        merged = torch.empty(b, p)
        yield ("soft_merge_forward" + shape, lambda s=s: s @ w,
               lambda s=s, merged=merged: torch.mm(s, w, out=merged))
        d_merged = torch.rand(b, p, generator=gen) * 2 - 1
        d_s = torch.empty(b, n)
        d_w = torch.empty(n, p)

        def backward_out(s=s, d_merged=d_merged, d_s=d_s, d_w=d_w):
            torch.mm(d_merged, w.t(), out=d_s)
            torch.mm(s.t(), d_merged, out=d_w)

        yield ("soft_merge_backward" + shape, lambda s=s, d_merged=d_merged: (d_merged @ w.t(), s.t() @ d_merged),
               backward_out)


def top_k_cases():
    n, p, density = 8, 1 << 22, 0.2
    k = int(density * p)
    gen = torch.Generator().manual_seed(2025)
    deltas = torch.rand(n, p, generator=gen) * 2 - 1
    keep = torch.empty(n, p, dtype=torch.uint8)
    values = torch.empty(n, k)
    indices = torch.empty(n, k, dtype=torch.long)

    def idiomatic():
        mask = torch.zeros(n, p, dtype=torch.uint8)
        return mask.scatter_(1, torch.topk(deltas.abs(), k, dim=1).indices, 1)

    def preallocated():
        torch.topk(deltas.abs(), k, dim=1, out=(values, indices))
        keep.zero_().scatter_(1, indices, 1)

    yield f"ties_top_k/N={n}/P={p}/density={density}", idiomatic, preallocated


def ties_mask_cases():
    """mergekit's TIES rules producing camex's output: the factor f[i, p] = [kept and agrees] / divisor."""
    n, p, density = 8, 1 << 22, 0.2
    k = int(density * p)
    gen = torch.Generator().manual_seed(2025)
    deltas = torch.rand(n, p, generator=gen) * 2 - 1
    weights = torch.ones(n, 1)

    def factors():
        keep = torch.zeros(n, p).scatter_(1, torch.topk(deltas.abs(), k, dim=1).indices, 1.0)
        weighted = deltas * keep * weights
        elected = (weighted.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
        agree = (weighted.sign() == elected).to(deltas.dtype)
        divisor = (weights * agree).sum(dim=0)
        divisor[divisor == 0] = 1
        return agree / divisor

    # No out= form of this composite; both columns time the same code.
    yield f"ties_mask/N={n}/P={p}/density={density}", factors, factors


# Each case yields (name, idiomatic, preallocated): the expression a PyTorch user writes (fresh output tensors,
# whose page faults are part of its cost on CPU) and the same math into preallocated outputs (out=), which is the
# kernel-for-kernel comparison with camex. Both are reported.
CASES = [soft_merge_cases, top_k_cases, ties_mask_cases]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--filter", default="", help="regular expression; only matching case names run")
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pattern = re.compile(args.filter)
    results = []
    for family in CASES:
        for name, idiomatic, preallocated in family():
            if not pattern.search(name):
                continue
            seconds, out_seconds = median_seconds(idiomatic), median_seconds(preallocated)
            print(f"torch {name}: {seconds * 1e3:.3f} ms, with out=: {out_seconds * 1e3:.3f} ms",
                  file=sys.stderr, flush=True)
            results.append({"name": name, "seconds": seconds, "out_seconds": out_seconds})
    json.dump({"torch_version": torch.__version__, "threads": torch.get_num_threads(),
               "blas_config": blas_config_line(), "blas_loaded": loaded_blas(), "cases": results}, sys.stdout)


if __name__ == "__main__":
    main()
