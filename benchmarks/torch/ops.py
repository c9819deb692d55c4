"""The PyTorch side of benchmarks/run: the same operations as camex's benchmark cases, same shapes, same thread
count, timed the same way (median of repetitions). Prints JSON on stdout.

Run by /usr/bin/python3 with Debian's python3-torch; the BLAS torch actually loaded is reported, because without
libopenblas0-pthread torch silently uses the reference BLAS and every comparison flatters camex.

--device cuda runs every case on the GPU instead (scripts/gpu-check, beside camex_bench built for Kokkos' Cuda
backend): tensors are made there, and every timed call ends in torch.cuda.synchronize(), as camex's cases end in a
fence.
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


DEVICE = torch.device("cpu")


def synchronize():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def generator(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


def use_device(name):
    """Makes `name` the device every case's tensors are created on."""
    global DEVICE
    DEVICE = torch.device(name)
    if DEVICE.type == "cpu":
        return
    if hasattr(torch, "set_default_device"):  # torch >= 2.0
        torch.set_default_device(DEVICE)
    else:
        torch.set_default_tensor_type(torch.cuda.FloatTensor)


def timings(fn, min_seconds=0.5, min_reps=5):
    """(best, median) seconds of repeated calls: the best is what the report compares, as camex's side does."""
    inner = fn

    def fn():
        inner()
        synchronize()

    t0 = time.perf_counter()
    fn()  # warm-up: thread pool, page faults
    if time.perf_counter() - t0 > 1:
        min_reps = 3  # the multi-second curvature cases: three runs keep a full benchmark run within minutes
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def soft_merge_cases():
    n, p = 8, 1 << 22
    gen = generator(2025)
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
    gen = generator(2025)
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
    gen = generator(2025)
    deltas = torch.rand(n, p, generator=gen) * 2 - 1

    def factors():
        return ties_factors(deltas, density)

    # No out= form of this composite; both columns time the same code.
    yield f"ties_mask/N={n}/P={p}/density={density}", factors, factors


def ties_factors(deltas, density, weights=None):
    """mergekit's TIES factor f[i, p] = [kept by the trim and agreeing with the elected sign] / disjoint divisor."""
    n, p = deltas.shape
    weights = torch.ones(n, 1) if weights is None else weights
    keep = torch.zeros(n, p).scatter_(1, torch.topk(deltas.abs(), int(density * p), dim=1).indices, 1.0)
    weighted = deltas * keep * weights
    elected = (weighted.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    agree = (weighted.sign() == elected).to(deltas.dtype)
    divisor = (weights * agree).sum(dim=0)
    divisor[divisor == 0] = 1
    return agree / divisor


def dare_rows(deltas, drop):
    """DARE as mergekit draws it: a Bernoulli keep mask and the 1 / (1 - p) rescale."""
    return deltas * torch.bernoulli(torch.full_like(deltas, 1 - drop)) / (1 - drop)


def nearest_factors(d):
    f = int(d ** 0.5)
    while f > 1 and d % f:
        f -= 1
    return f, d // f


def curvature(deltas, factors, shape):
    """sum over ranks of tau x1 A x2 B x3 C x4 D for every expert at once, as sequential batched mode products."""
    n = deltas.shape[0]
    (o1, o2), (i1, i2) = nearest_factors(shape[0]), nearest_factors(shape[1])
    x = deltas.view(n, o1, o2, i1, i2)
    out = torch.zeros_like(x)
    for a, b, c, d in factors:
        y = torch.einsum("nab,nbcde->nacde", a, x)
        y = torch.einsum("ncb,nabde->nacde", b, y)
        y = torch.einsum("ndb,nacbe->nacde", c, y)
        out += torch.einsum("neb,nacdb->nacde", d, y)
    return out.view(n, -1)


def random_factors(gen, n, shape, rank=8):
    """Rank-many factor quadruples near the unit init (camex's default: M = I), perturbed so none is special."""
    extents = [*nearest_factors(shape[0]), *nearest_factors(shape[1])]
    scale = rank ** (-1 / len(extents))
    return [[scale * torch.eye(e).expand(n, e, e) + 0.1 * (torch.rand(n, e, e, generator=gen) - 0.5)
             for e in extents] for _ in range(rank)]


def policy_cases():
    """One step (masks, transform, merge of B groups) of each merge policy, as benchmarks/policies.cpp names it.
    Curvature factors are batched over experts; PyTorch has no out= form of these composites (no second column)."""
    gen = generator(2025)
    rand = lambda *size: torch.rand(*size, generator=gen) * 2 - 1
    shapes = [("N=8/P=4194304", (2048, 2048), 8, (1,))] + \
             [(f"{r}x{c}/n=7", (r, c), 7, (1, 8, 32)) for r, c in ((768, 3072), (3072, 768))]
    for label, shape, n, groups in shapes:
        p = shape[0] * shape[1]
        experts, base = rand(n, p), rand(1, p)
        stacked = torch.cat([experts, base])
        for b in groups:
            at = f"/{label}/B={b}"
            s = torch.rand(b, n, generator=gen)
            s_all = torch.rand(b, n + 1, generator=gen)
            yield "euclidean" + at, lambda s_all=s_all: s_all @ stacked, None
            yield "domain" + at, lambda s=s: base + 0.5 * (s @ (experts - base)), None
            yield f"ties{at}/density=0.2", lambda s=s: base + s @ (ties_factors(experts - base, 0.2) * (experts - base)), None
            yield f"dare{at}/p=0.1", lambda s=s: base + s @ dare_rows(experts - base, 0.1), None
            if n == 8:
                continue
            factors = random_factors(gen, n, shape)
            yield (f"curvature_aware{at}/r=8", lambda s=s, f=factors: base + s @ curvature(experts - base, f, shape), None)

            def ties_ca(s=s, f=factors):
                tau = experts - base
                return base + s @ curvature(ties_factors(tau, 0.2) * tau, f, shape)

            yield f"ties_ca{at}/density=0.2/r=8", ties_ca, None
            yield (f"dare_ca{at}/p=0.1/r=8",
                   lambda s=s, f=factors: base + s @ curvature(dare_rows(experts - base, 0.1), f, shape), None)
            later = rand(n, p)
            factors1 = random_factors(gen, n, shape)

            def dynamic(s=s, f0=factors, f1=factors1, gamma=0.5):
                rows0 = curvature(experts - base, f0, shape)
                merged0 = base + s @ rows0
                propagated = base + gamma / n * rows0.sum(dim=0, keepdim=True)
                merged1 = propagated + s @ curvature(later - propagated, f1, shape)
                return merged0, merged1

            yield f"dynamic{at}/layers=2/r=8", dynamic, None


def merged_linear_cases():
    """One training step of benchmarks/layers.cpp's merged linear with autograd: routing inputs by causal segments
    (segment 0 on itself, detached), the noisy gate with k = n and the cv^2 importance loss, TIES-CA merges of the
    weight and the bias per group, the per-group products, and the backward to every input and parameter."""
    S, L, T, I, O, n, r = 4, 1024, 256, 768, 3072, 7, 8
    G, N = S * L // T, S * L
    gen = generator(2025)
    rand = lambda *size: torch.rand(*size, generator=gen) * 2 - 1
    leaf = lambda t: t.requires_grad_()
    x, d_y = leaf(rand(N, I)), rand(N, O)
    experts_w, base_w = leaf(rand(n, O * I)), leaf(rand(1, O * I))
    experts_b, base_b = leaf(rand(n, O)), leaf(rand(1, O))
    factors_w = [[leaf(f.clone()) for f in q] for q in random_factors(gen, n, (O, I), r)]
    factors_b = [[leaf(f.clone()) for f in q] for q in random_factors(gen, n, (O, 1), r)]
    w_gate, w_noise = leaf(torch.randn(I, n, generator=gen) * 0.02), leaf(torch.randn(I, n, generator=gen) * 0.02)
    leaves = [x, experts_w, base_w, experts_b, base_b, w_gate, w_noise] + \
        [f for q in factors_w + factors_b for f in q]

    def cv_squared(v):
        return v.var() / (v.mean() ** 2 + 1e-10)

    def ties_ca(experts, base, factors, shape):
        tau = experts - base
        with torch.no_grad():  # the TIES factor is piecewise constant: no gradient flows through it
            f = ties_factors(tau, 0.2)
        return curvature(f * tau, factors, shape)

    def step():
        for t in leaves:
            t.grad = None
        segments = x.view(S, L // T, T, I).mean(dim=2)
        routed = torch.cat([segments[:, :1].detach(), segments[:, :-1]], dim=1).reshape(G, I)
        noise = torch.nn.functional.softplus(routed @ w_noise) + 0.01
        scores = torch.softmax(routed @ w_gate + torch.randn(G, n) * noise, dim=1)
        aux = 1e-5 * cv_squared(scores.sum(dim=0))
        merged_w = base_w + scores @ ties_ca(experts_w, base_w, factors_w, (O, I))
        merged_b = base_b + scores @ ties_ca(experts_b, base_b, factors_b, (O, 1))
        y = torch.baddbmm(merged_b.view(G, 1, O), x.view(G, T, I), merged_w.view(G, O, I).transpose(1, 2))
        ((y.view(N, O) * d_y).sum() + aux).backward()

    yield f"merged_linear/768to3072/n={n}/ties_ca/tokens={S}x{L}/T={T}/r={r}", step, None


# Each case yields (name, idiomatic, preallocated): the expression a PyTorch user writes (fresh output tensors,
# whose page faults are part of its cost on CPU) and the same math into preallocated outputs (out=), which is the
# kernel-for-kernel comparison with camex; preallocated is None where PyTorch has no out= form. Both are reported.
CASES = [soft_merge_cases, top_k_cases, ties_mask_cases, policy_cases, merged_linear_cases]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--filter", default="", help="regular expression; only matching case names run")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    use_device(args.device)
    pattern = re.compile(args.filter)
    results = []
    for family in CASES:
        for name, idiomatic, preallocated in family():
            if not pattern.search(name):
                continue
            seconds, median = timings(idiomatic)
            out_seconds = timings(preallocated)[0] if preallocated else None
            print(f"torch {name}: {seconds * 1e3:.3f} ms (median {median * 1e3:.3f})" +
                  (f", with out=: {out_seconds * 1e3:.3f} ms" if out_seconds else ""), file=sys.stderr, flush=True)
            results.append({"name": name, "seconds": seconds, "median_seconds": median, "out_seconds": out_seconds})
    json.dump({"torch_version": torch.__version__, "threads": torch.get_num_threads(), "device": str(DEVICE),
               "device_name": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu",
               "blas_config": blas_config_line(), "blas_loaded": loaded_blas(), "cases": results}, sys.stdout)


if __name__ == "__main__":
    main()
