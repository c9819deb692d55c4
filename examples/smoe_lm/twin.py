#!/usr/bin/python3
"""The PyTorch twin of smoe_lm's model (examples/smoe_lm/model.hpp with the MLPs of examples/common/nn/mlp.hpp and
the camex merge policies and routers of examples/common/moe, whose rules it reads from policies.json).

  twin.py compare DUMP [DUMP ...]
      DUMP is what `smoe_lm <options> --dump-step DUMP` writes: the configuration, every trainable tensor, one step's
      batch, the probabilities, cross-entropy and aux loss, and every gradient of their sum, all from the float32 C++
      model. The twin rebuilds the model from the configuration and the parameters in float64, draws the same random
      numbers (Philox4x32-10 and the CounterRng layout of include/camex/core/random.hpp, ported to numpy), runs the
      forward, takes every gradient by autograd and compares. One line per tensor group (layers folded together),
      then PASS or FAIL. Exit 0 on pass, 1 on a mismatch, 77 when torch cannot be imported.

  twin.py train CONFIG.json --steps N [--threads T] [--device cuda]
      The same model in float32, randomly initialised, trained with torch.optim.AdamW under smoe_lm's schedule
      (warm-up, linear decay, global-norm clipping, weight decay on matrices only) on random token batches of the
      configuration's shape; prints tokens/s and ms/step over the timed steps (after two warm-up steps) and torch's
      BLAS line: the PyTorch side of a throughput comparison with smoe_lm. Random draws here come from torch's own
      generator; this mode does not reproduce the C++ numbers. --device cuda trains on the GPU (torch 2.0 or
      newer): the parameters are initialised on the host and moved there once, batches and draws are made there.

Tolerances of `compare` (see TOLERANCES below). The C++ model runs in float32, the twin in float64 with the same
formulas, so they differ by float32 roundoff accumulated through the layers and nothing else. Discrete decisions
(the TIES trim, DARE's masks, the routers' top-k) are taken by the twin on exactly the float32 values the C++ saw
where those are inputs (the trim and TIES election use the float32 deltas E_i - base, as camex computes them) and
otherwise on float64 values that differ from the C++'s float32 ones by roundoff; where a router's k-th and (k+1)-th
noisy logits come within 1e-4 of each other (relative), a note says that roundoff could have flipped the choice.

What smoe_lm's options can build is covered; library options no run of it sets are not (SMEAR's expert dropout,
the CAMEx code's sign-agreement TIES, DARE's L1 rescale and expert granularity, padding masks, the identity-factor
curvature init, per_group gate rows). Under causal segment routing the router scores every segment on its own mean,
segment s merges with segment s - 1's gates and segment 0 with its own, detached (also when it is the only segment,
--segment equal to --context), and the balancing loss sums every segment's own gates, as camex::RoutingLayout's
default GateRows::per_segment does.
"""
import argparse
import json
import math
import os
import re
import sys
import time

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
    IMPORT_ERROR = None
except Exception as error:  # noqa: BLE001 - any failure to import torch (or numpy) means "skip"
    np = torch = F = None
    IMPORT_ERROR = error

SKIP = 77
DUMP_FORMAT = "camex.smoe_lm.dump.v1"

# ------------------------------------------------------------------------------------------------------------------
# Tolerances of `compare`, each a bound on an error relative to a scale of the quantity itself.
#
# The C++ runs in float32 (unit roundoff u = 2^-24 = 6.0e-8), the twin in float64 with the same formulas and the same
# discrete choices, so the two differ by the float32 roundoff the C++ accumulates and by nothing else. A float32 dot
# product of K terms is accurate to about sqrt(K) u of the sum of the terms' magnitudes; the model chains a dozen
# such products and normalisations per layer forward and as many back, and some gradients are differences of nearly
# equal sums (a softmax Jacobian of inner products <G_b, D_i> over O I terms for a router; sum_b G_b minus the
# experts' gradients for a base), so each tensor's error is expected at 1e0 .. 1e2 u of its own scale.
# Measured (examples/smoe_lm/twin.py against smoe_lm, every policy, segment and sequence routing, seeds 1-9, fresh,
# resumed after 30 steps, upcycled; tiny 16-channel models, a 64-channel 4-layer one and the default 128-channel
# 4-layer vocab-4096 one): gradients <= 2.2e-6 (36 u), probabilities <= 6.5e-7, cross-entropy <= 1.0e-9 and aux
# <= 1.2e-8 (both are sums in double of many float32 terms, whose errors average out).
# Each bound sits one to two orders of magnitude above those measurements and as far below what a twin or C++
# error produces: dropping the stop-gradient of segment 0's routing, the gradient through the top-k thresholds of
# the load term, the aux loss, or moving one random draw to another site gives 1e-3 .. 1 in these same measures.
TOLERANCES = {
    "cross_entropy": 1e-6,   # |ce_c - ce_t| / ce_t
    "aux": 1e-6,             # |aux_c - aux_t| / max(aux_t, 1e-6 coefficient)
    "probabilities": 1e-5,   # max |p_c - p_t| / max p_t
    "gradient": 1e-4,        # max |g_c - g_t| / scale, per tensor: scale = max |g_t| (and see below)
}
# A tensor whose twin gradient is tiny against the largest gradient of the model is compared against a floor of
# 1e-6 of that largest gradient (its own scale would divide roundoff by nearly zero); a base's scale is at least its
# experts' (see compare()).
GRADIENT_FLOOR = 1e-6

# ------------------------------------------------------------------------------------------------------------------
# Philox4x32-10 and camex::CounterRng (include/camex/core/random.hpp), vectorised over numpy arrays of sites.

def philox4x32(counter, key):
    """Four uint32 arrays out of a counter of four and a key of two uint32 arrays (broadcast together). Words are
    held in uint64 so that a 32 x 32-bit product is exact."""
    low, shift = np.uint64(0xFFFFFFFF), np.uint64(32)
    m0, m1, w0, w1 = (np.uint64(v) for v in (0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85))
    c0, c1, c2, c3 = (np.asarray(c).astype(np.uint64) & low for c in counter)
    k0, k1 = (np.asarray(k).astype(np.uint64) & low for k in key)
    for round_ in range(10):
        if round_ > 0:  # Weyl increments of the key
            k0 = (k0 + w0) & low
            k1 = (k1 + w1) & low
        p0, p1 = m0 * c0, m1 * c2
        c0, c1, c2, c3 = ((p1 >> shift) ^ c1 ^ k0, p1 & low, (p0 >> shift) ^ c3 ^ k1, p0 & low)
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


class CounterRng:
    """camex::CounterRng(seed, step): the step key is Philox({step lo, step hi, 0, 'cmx0'}, seed) truncated to 64
    bits; site (stream, expert, element) reads word element % 4 of Philox({q lo, q hi, expert, stream}, step key)
    with q = element / 4."""

    def __init__(self, seed, step):
        out = philox4x32((step & 0xFFFFFFFF, step >> 32, 0, 0x636D7830), (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF))
        self.key = (out[0], out[1])

    def bits(self, stream, expert, element):
        element = np.asarray(element).astype(np.uint64)
        quad = element >> np.uint64(2)
        words = philox4x32((quad & np.uint64(0xFFFFFFFF), quad >> np.uint64(32), expert, stream), self.key)
        which = element & np.uint64(3)
        shape = np.broadcast_shapes(words[0].shape, which.shape)
        out = np.empty(shape, dtype=np.uint32)
        for w in range(4):
            np.copyto(out, np.broadcast_to(words[w], shape), where=np.broadcast_to(which == w, shape))
        return out

    def uniform(self, stream, expert, element):
        """(word >> 8) 2^-24: 24 random bits, exact in float32 (returned as float64, the same value)."""
        return (self.bits(stream, expert, element) >> np.uint32(8)).astype(np.float64) * 2.0 ** -24

    def normal(self, stream, expert, element):
        """Box-Muller from bits(site) and bits(stream, ~expert, element)."""
        expert = np.asarray(expert).astype(np.uint64)
        w0 = self.bits(stream, expert, element).astype(np.float64)
        w1 = self.bits(stream, np.uint64(0xFFFFFFFF) - expert, element).astype(np.float64)  # ~expert
        u1 = (w0 + 1.0) * 2.0 ** -32
        u2 = w1 * 2.0 ** -32
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * 3.14159265358979323846 * u2)


def philox_self_test():
    """Random123's known-answer vectors (the ones tests/core/random.cpp checks); raises on a mismatch."""
    kats = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
            ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
            ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
             (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, expected in kats:
        got = tuple(int(w) for w in philox4x32(counter, key))
        if got != expected:
            raise AssertionError(f"Philox4x32-10 known answer: got {[hex(w) for w in got]}, expected "
                                 f"{[hex(w) for w in expected]}")
    # bits() of consecutive elements are the words of consecutive blocks, in order.
    rng = CounterRng(123456789012345, 77)
    block = philox4x32((5, 0, 3, 9), rng.key)
    if list(rng.bits(9, 3, np.arange(20, 24))) != [int(w) for w in block]:
        raise AssertionError("CounterRng.bits does not read block q = element / 4, word element % 4")


# ------------------------------------------------------------------------------------------------------------------
# The configuration (examples/smoe_lm/config.hpp and common/train/config.hpp) and the tensors it declares.

CONFIG_DEFAULTS = {
    "vocab": 4096, "context": 128, "channels": 128, "heads": 4, "layers": 4, "hidden": 0, "policy": "ties-ca",
    "experts": 4, "top_k": 0, "routing": "segment", "segment": 32, "alpha": 0.0, "density": 0.2, "drop": 0.1,
    "gamma": 0.5, "aux": 1e-2, "rank": 2, "router_noise": True, "steps": 600, "seed": 1, "batch": 8, "lr": 2e-3,
    "weight_decay": 0.1, "clip": 1.0, "final_lr_fraction": 0.1, "warmup": 60,
}
# The policies and their rules: the registry the C++ trainers compile in (examples/common/moe/policies.json).
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common", "moe", "policies.json")) as _registry:
    REGISTRY = {p["name"]: p for p in json.load(_registry)["policies"]}
POLICIES = tuple(REGISTRY)


def nearest_factors(d):
    """(f, d / f), f the largest divisor of d not above floor(sqrt(d)) (camex::nearest_factors)."""
    f = math.isqrt(d)
    while f > 1 and d % f:
        f -= 1
    return f, d // f


CURVATURE_NAMES = ("curvature.out1", "curvature.out2", "curvature.in1", "curvature.in2")


class Spec:
    """What the model is, from a configuration (a smoe_lm config.json or a dump's "config")."""

    def __init__(self, config, vocab=None):
        c = dict(CONFIG_DEFAULTS)
        c.update(config)
        self.config = c
        if c["policy"] not in POLICIES:
            raise ValueError(f"unknown policy '{c['policy']}' (expected one of {', '.join(POLICIES)})")
        self.policy = c["policy"]
        self.vocab = int(vocab if vocab is not None else c["vocab"])
        self.context, self.channels, self.heads, self.layers = (int(c[k]) for k in ("context", "channels", "heads",
                                                                                      "layers"))
        self.hidden = int(c["hidden"]) or 4 * self.channels
        self.batch = int(c["batch"])
        self.experts = int(c["experts"])
        rule = REGISTRY[self.policy]
        self.dense = not rule["experts"]
        # --top-k 0: the policy's default (router_top_k); 0 there means every expert.
        k = int(c["top_k"]) or int(rule["top_k"])
        self.top_k = k if k > 0 else self.experts
        self.router_noise = bool(c["router_noise"])
        self.aux = float(c["aux"])
        self.sequence_routing = c["routing"] == "sequence"
        self.group_length = self.context if self.sequence_routing else int(c["segment"])
        self.segments = 1 if self.sequence_routing else self.context // self.group_length
        self.groups = self.batch * self.segments
        # merge_step(): --alpha where the policy takes it and it is not 0, else the policy's default; policies without
        # a base (smoe, smear) merge with alpha = 1 whatever --alpha says.
        alpha = float(c["alpha"])
        self.alpha = alpha if rule["alpha"] == "option" and alpha > 0 else float(rule["default_alpha"])
        self.base = rule["base"]
        self.mask = rule["mask"]
        self.curvature = rule["curvature"]
        self.rank = int(c["rank"])
        self.density = float(c["density"])
        self.drop = float(c["drop"])
        self.gamma = float(c["gamma"])
        self.router = rule["router"]
        self.seed = int(c["seed"])

    def linears(self):
        """(name, O, I, init std) of the MLP's two linears."""
        proj_std = 0.02 / math.sqrt(2.0 * self.layers)
        return (("fc", self.hidden, self.channels, 0.02), ("proj", self.channels, self.hidden, proj_std))

    def merged_blocks(self):
        """The blocks whose MLPs merge experts, in order (every block of the language model)."""
        return [] if self.dense else list(range(self.layers))

    def ordinal(self, layer):
        """Block `layer`'s place among the merged blocks: its MLP's draw streams, its routers' seeds and its place in
        a dynamic-merging chain go by it."""
        return self.merged_blocks().index(layer)

    def has_base(self, layer):
        return self.base == "parameter" or (self.base == "propagated" and self.ordinal(layer) == 0)

    def curvature_modes(self, rows, cols):
        """[(mode k, parameter name, extent d)] of a tensor [rows, cols]; extents of 1 carry no factor."""
        extents = (*nearest_factors(rows), *(nearest_factors(cols) if cols != 1 else (1, 1)))
        return extents, [(k, CURVATURE_NAMES[k], extents[k]) for k in range(4) if extents[k] != 1]

    def declarations(self):
        """[(name, logical shape, decays, init)] of every trainable tensor in the C++ order: the arena's (model.hpp,
        mlp.hpp), then each layer's library components (MergedMlp::component_parameters)."""
        v, lc, c, h, n = self.vocab, self.context, self.channels, self.hidden, self.experts
        proj_std = 0.02 / math.sqrt(2.0 * self.layers)
        out = [("wte", [v, c], True, ("normal", 0.02)), ("wpe", [lc, c], True, ("normal", 0.02))]
        for l in range(self.layers):
            p = f"h{l}."
            out += [(p + "ln1.weight", [c], False, ("ones",)), (p + "ln1.bias", [c], False, ("zeros",)),
                    (p + "attn.weight", [3 * c, c], True, ("normal", 0.02)),
                    (p + "attn.bias", [3 * c], False, ("zeros",)),
                    (p + "attn.proj.weight", [c, c], True, ("normal", proj_std)),
                    (p + "attn.proj.bias", [c], False, ("zeros",)),
                    (p + "ln2.weight", [c], False, ("ones",)), (p + "ln2.bias", [c], False, ("zeros",))]
            for lin, o, i, std in self.linears():
                q = f"{p}mlp.{lin}."
                if self.dense:
                    out += [(q + "weight", [o, i], True, ("normal", std)), (q + "bias", [o], False, ("zeros",))]
                    continue
                out.append((q + "weight.experts", [n, o, i], True, ("normal", std)))
                if self.has_base(l):
                    out.append((q + "weight.base", [1, o, i], True, ("normal", std)))
                out.append((q + "bias.experts", [n, o], False, ("zeros",)))
                if self.has_base(l):
                    out.append((q + "bias.base", [1, o], False, ("zeros",)))
        out += [("lnf.weight", [c], False, ("ones",)), ("lnf.bias", [c], False, ("zeros",))]
        if self.dense:
            return out
        for l in range(self.layers):
            for lin, o, i, _ in self.linears():
                q = f"h{l}.mlp.{lin}."
                for part, cols in (("weight", i), ("bias", 1)):
                    if self.curvature:
                        _, modes = self.curvature_modes(o, cols)
                        scale = self.rank ** (-1.0 / len(modes)) if modes else 1.0  # CurvatureInit::unit
                        for _, name, d in modes:
                            out.append((f"{q}{part}.{name}", [self.rank, n, d, d], False, ("eye", scale)))
                r = q + "router."
                if self.router == "noisy":
                    out += [(r + "w_gate", [n, i], False, ("normal", 0.02)), (r + "w_noise", [n, i], False, ("normal", 0.02))]
                else:
                    out += [(r + "ln_gain", [i], False, ("ones",)), (r + "ln_bias", [i], False, ("zeros",)),
                            (r + "w_router", [n, i], False, ("normal", 0.01)),
                            (r + "column_gain", [n, i], False, ("fill", 0.01)),
                            (r + "column_bias", [n, i], False, ("zeros",))]
        return out


# ------------------------------------------------------------------------------------------------------------------
# Random draws: camex's counter-based ones (compare) or torch's generator (train).
# Draw streams, as camex declares them: MergedLinear::random_streams (weights' policy, bias's, router) and
# MergedMlp::random_streams (fc's layer, then proj's); the model gives block l's MLP the streams from MLP_STREAMS * l.
LINEAR_STREAMS = 3
MLP_STREAMS = 2 * LINEAR_STREAMS

class CounterDraws:
    """The draws of StepContext{seed, step, stream, training}: router noise at (router's stream, expert j, group g),
    DARE keeps at (policy's stream, expert i, element p), SMEAR expert dropout at (router's stream, expert j, group g)."""
    exact = True

    def __init__(self, seed, step, dtype):
        self.rng = CounterRng(seed, step)
        self.dtype = dtype

    def normal(self, stream, groups, experts):
        g, j = np.meshgrid(np.arange(groups), np.arange(experts), indexing="ij")
        return torch.from_numpy(self.rng.normal(stream, j, g)).to(self.dtype)

    def uniform_below(self, stream, rows, elements, threshold):
        """[rows, elements] of uniform(stream, row, element) < float32(threshold), as camex compares them."""
        i, p = np.meshgrid(np.arange(rows), np.arange(elements), indexing="ij")
        return torch.from_numpy(self.rng.uniform(stream, i, p) < float(np.float32(threshold)))


class TorchDraws:
    exact = False

    def __init__(self, dtype, generator=None):
        self.dtype = dtype
        self.generator = generator

    def normal(self, stream, groups, experts):
        return torch.randn(groups, experts, dtype=self.dtype, generator=self.generator)

    def uniform_below(self, stream, rows, elements, threshold):
        return torch.rand(rows, elements, generator=self.generator) < threshold


# ------------------------------------------------------------------------------------------------------------------
# The model.

def gelu_tanh(h):
    """GPT-2's GELU, camex::activate."""
    return 0.5 * h * (1.0 + torch.tanh(0.79788456080286535588 * (h + 0.044715 * h * h * h)))


def softplus(x):
    """max(x, 0) + log1p(exp(-|x|)), as NoisyTopKGate (no threshold)."""
    return torch.clamp(x, min=0) + torch.log1p(torch.exp(-x.abs()))


def cv_squared(v):
    """var(v) / (mean(v)^2 + 1e-10), unbiased variance; 0 for fewer than 2 entries."""
    n = v.numel()
    if n < 2:
        return v.sum() * 0
    mean = v.mean()
    return ((v - mean) ** 2).sum() / (n - 1) / (mean * mean + 1e-10)


def stable_descending_order(values):
    """Per row, indices by descending value with equal values in index order (NoisyTopKGate's insertion sort)."""
    return torch.sort(values.detach(), dim=1, descending=True, stable=True).indices


def ties_trim_exact(tau32, k):
    """keep[i, p] = the k largest |tau32[i]|, ties to the lowest indices (camex::top_k_by_magnitude), from the
    float32 deltas themselves."""
    n, p = tau32.shape
    keep = np.zeros((n, p), dtype=bool)
    index = np.arange(p)
    for i in range(n):
        order = np.lexsort((index, -np.abs(tau32[i])))  # primary: |tau| descending; then index ascending
        keep[i, order[:k]] = True
    return keep


def ties_factor(tau32, density, exact):
    """The standard TIES factor f[i, p] (merge/ties_mask.hpp) with unit weights, lambda 1, normalize, election by
    sum: [kept and agreeing with the elected sign] / (agreeing experts, or 1), rounded to float32 as camex keeps it.
    tau32 is the float32 delta stack [n, P]; no gradient flows through f."""
    n, p = tau32.shape
    k = p if density >= 1 else int(density * p)
    if k == 0:
        raise ValueError(f"density {density} keeps no entry of {p}")
    if exact:
        keep = torch.from_numpy(ties_trim_exact(tau32.numpy(), k)) if k < p else torch.ones(n, p, dtype=torch.bool)
    else:
        keep = torch.zeros(n, p, dtype=torch.bool)
        if k < p:
            keep.scatter_(1, torch.topk(tau32.abs(), k, dim=1).indices, True)
        else:
            keep.fill_(True)
    d = torch.where(keep, tau32.double(), torch.zeros((), dtype=torch.float64))
    elected = torch.where(d.sum(0) >= 0, 1.0, -1.0).double()
    agree = d * elected > 0
    agreeing = agree.double().sum(0)
    scale = 1.0 / torch.where(agreeing != 0, agreeing, torch.ones_like(agreeing))
    return torch.where(agree, scale, torch.zeros((), dtype=torch.float64)).float()


class Twin:
    """smoe_lm's GPT over a dict of parameter tensors (logical shapes, any float dtype), with draws from `draws`."""

    def __init__(self, spec, params, draws, training=True):
        self.spec = spec
        self.p = params
        self.draws = draws
        self.training = training
        self.min_top_k_margin = math.inf  # smallest gap between the k-th and (k+1)-th noisy logit seen

    # -- the merged MLP ----------------------------------------------------------------------------------------
    def routing_inputs(self, x):
        """[G, I]: the router rows' inputs, each routing group's own mean (per segment, or per sequence)."""
        s = self.spec
        means = x.view(s.batch, s.segments, s.group_length, -1).mean(2)
        return means.reshape(s.groups, -1)

    def merge_scores(self, gates):
        """[G, n]: under causal segments segment s merges with segment s - 1's gates and segment 0 with its own,
        detached; under sequence routing each sequence with its own."""
        s = self.spec
        if s.sequence_routing:
            return gates
        rows = gates.view(s.batch, s.segments, -1)
        return torch.cat([rows[:, :1].detach(), rows[:, :-1]], dim=1).reshape(s.groups, -1)

    def noisy_top_k(self, prefix, routed, tensor):
        """scores [G, n] and the balancing loss of camex::NoisyTopKGate."""
        s = self.spec
        w_gate, w_noise = self.p[prefix + "w_gate"], self.p[prefix + "w_noise"]
        n, k = s.experts, s.top_k
        clean = routed @ w_gate.t()
        noisy = self.training and s.router_noise
        if noisy:
            sigma = softplus(routed @ w_noise.t()) + 0.01
            logits = clean + self.draws.normal(tensor, routed.shape[0], n).to(clean.dtype) * sigma
        else:
            sigma, logits = None, clean
        order = stable_descending_order(logits)
        if k < n:
            ranked = logits.detach().gather(1, order)
            margin = (ranked[:, k - 1] - ranked[:, k]).abs() / ranked.abs().max().clamp(min=1e-30)
            self.min_top_k_margin = min(self.min_top_k_margin, float(margin.min()))
        selected = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, order[:, :k], True)
        scores = torch.softmax(logits.masked_fill(~selected, -math.inf), dim=1)
        importance = scores.sum(0)
        if noisy and k < n:
            theta_in = logits.gather(1, order[:, k:k + 1])
            theta_out = logits.gather(1, order[:, k - 1:k])
            theta = torch.where((logits > theta_in).detach(), theta_in, theta_out)
            load = (0.5 * torch.erfc(-(clean - theta) / sigma * 0.70710678118654752440)).sum(0)
        else:
            load = (scores.detach() > 0).to(scores.dtype).sum(0)
        return scores, s.aux * (cv_squared(importance) + cv_squared(load))

    def smear_router(self, prefix, routed, tensor):
        """scores [G, n] of camex::SmearRouter (its defaults: normalised weights, no expert dropout); no loss."""
        p, width = self.p, routed.shape[1]
        u = F.layer_norm(routed, (width,), p[prefix + "ln_gain"], p[prefix + "ln_bias"], 1e-5)
        v = F.layer_norm(p[prefix + "w_router"], (width,), None, None, 1e-5) * p[prefix + "column_gain"] + \
            p[prefix + "column_bias"]
        return torch.softmax(u @ v.t(), dim=1), routed.sum() * 0

    def curvature(self, x, prefix, rows, cols):
        """M_i(x_i) = sum_rho x_i x_1 A x_2 B x_3 C x_4 D for the stack x [n, rows * cols], every rank at once."""
        s = self.spec
        extents, modes = s.curvature_modes(rows, cols)
        if not modes:
            return x * 1.0  # CurvatureInit::unit leaves an unfactored tensor's M = I
        n = x.shape[0]
        y = x.reshape(1, n, *extents).expand(s.rank, n, *extents)
        for k, name, d in modes:
            factor = self.p[prefix + name]  # [rank, n, d, d]: out[.., a, ..] = sum_a' F[a, a'] in[.., a', ..]
            moved = torch.movedim(y, 2 + k, -1)
            shape = moved.shape
            moved = (moved.reshape(s.rank, n, -1, d) @ factor.transpose(-1, -2)).reshape(shape)
            y = torch.movedim(moved, -1, 2 + k)
        return y.sum(0).reshape(n, -1)

    def merge(self, layer, lin, part, rows, cols, scores, tensor):
        """[G, rows * cols]: base + alpha sum_i s[g, i] D_i with D_i = T_i(f_i .* tau_i), tau_i = E_i - base
        (merge/composed.hpp); for dynamic merging the base is the chain's P_l, and P_{l+1} is set here."""
        s, p = self.spec, self.p
        prefix = f"h{layer}.mlp.{lin}.{part}."
        experts = p[prefix + "experts"].reshape(s.experts, -1)
        if s.base == "propagated":
            if s.ordinal(layer) == 0:
                self.chain[(lin, part)] = p[prefix + "base"].reshape(1, -1)
            base = self.chain[(lin, part)]
        elif s.base == "parameter":
            base = p[prefix + "base"].reshape(1, -1)
        else:
            base = None
        tau = experts - base if base is not None else experts
        delta = tau
        if s.mask == "ties":
            # The trim and the election read the float32 deltas camex computes (E_i - base in float32).
            with torch.no_grad():
                tau32 = experts.detach().float() - base.detach().float()
                factor = ties_factor(tau32, s.density, self.draws.exact)
            delta = tau * factor.to(tau.dtype)
        elif s.mask == "dare" and self.training and s.drop > 0:
            with torch.no_grad():
                dropped = self.draws.uniform_below(tensor, s.experts, tau.shape[1], s.drop)
                keep_scale = float(np.float32(1.0 / (1.0 - s.drop)))  # camex scales by float(1 / (1 - drop))
                factor = torch.where(dropped, 0.0, keep_scale).to(tau.dtype)
            delta = tau * factor
        if s.curvature:
            delta = self.curvature(delta, prefix, rows, cols)
        merged = (s.alpha * scores) @ delta
        if base is not None:
            merged = merged + base
        if s.base == "propagated" and s.ordinal(layer) + 1 < len(s.merged_blocks()):
            self.chain[(lin, part)] = base + (s.gamma / s.experts) * delta.sum(0, keepdim=True)
        return merged

    def merged_linear(self, layer, lin, rows, cols, x, stream):
        """y_t = W_g x_t + b_g (MergedLinear): its LINEAR_STREAMS draw streams from `stream` on are the weight
        policy's, the bias policy's and the router's."""
        s = self.spec
        routed = self.routing_inputs(x)
        prefix = f"h{layer}.mlp.{lin}.router."
        if s.router == "noisy":
            gates, aux = self.noisy_top_k(prefix, routed, stream + 2)
        else:
            gates, aux = self.smear_router(prefix, routed, stream + 2)
        scores = self.merge_scores(gates)
        weights = self.merge(layer, lin, "weight", rows, cols, scores, stream).view(s.groups, rows, cols)
        bias = self.merge(layer, lin, "bias", rows, 1, scores, stream + 1)
        y = torch.baddbmm(bias.unsqueeze(1), x.view(s.groups, s.group_length, cols), weights.transpose(1, 2))
        return y.reshape(-1, rows), aux

    def mlp(self, layer, x):
        s, p = self.spec, self.p
        q = f"h{layer}.mlp."
        if layer not in s.merged_blocks():
            h = F.linear(x, p[q + "fc.weight"], p[q + "fc.bias"])
            return F.linear(gelu_tanh(h), p[q + "proj.weight"], p[q + "proj.bias"]), x.sum() * 0
        stream = MLP_STREAMS * s.ordinal(layer)
        h, aux_fc = self.merged_linear(layer, "fc", s.hidden, s.channels, x, stream)
        y, aux_proj = self.merged_linear(layer, "proj", s.channels, s.hidden, gelu_tanh(h), stream + LINEAR_STREAMS)
        return y, aux_fc + aux_proj

    # -- the GPT ------------------------------------------------------------------------------------------------
    def attention(self, qkv):
        s = self.spec
        c, heads = s.channels, s.heads
        d = c // heads
        q, k, v = (t.reshape(s.batch, s.context, heads, d).transpose(1, 2) for t in qkv.split(c, dim=1))
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d))
        causal = torch.ones(s.context, s.context, dtype=torch.bool).triu(1)
        att = torch.softmax(scores.masked_fill(causal, -math.inf), dim=-1)
        return (att @ v).transpose(1, 2).reshape(s.batch * s.context, c)

    def forward(self, inputs, targets):
        """(mean cross-entropy, summed aux losses, logits [N, V]) for token ids [S, L]."""
        s, p = self.spec, self.p
        c = s.channels
        self.chain = {}
        positions = torch.arange(s.context).repeat(s.batch)
        x = p["wte"][inputs.reshape(-1)] + p["wpe"][positions]
        aux = x.sum() * 0
        for l in range(s.layers):
            q = f"h{l}."
            h = F.layer_norm(x, (c,), p[q + "ln1.weight"], p[q + "ln1.bias"], 1e-5)
            qkv = F.linear(h, p[q + "attn.weight"], p[q + "attn.bias"])
            x = x + F.linear(self.attention(qkv), p[q + "attn.proj.weight"], p[q + "attn.proj.bias"])
            y, a = self.mlp(l, F.layer_norm(x, (c,), p[q + "ln2.weight"], p[q + "ln2.bias"], 1e-5))
            x = x + y
            aux = aux + a
        h = F.layer_norm(x, (c,), p["lnf.weight"], p["lnf.bias"], 1e-5)
        logits = h @ p["wte"].t()
        return F.cross_entropy(logits, targets.reshape(-1).long()), aux, logits


# ------------------------------------------------------------------------------------------------------------------
# compare

def read_safetensors(path):
    """(metadata, {name: numpy array}) of a safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    length = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + length])
    metadata = header.pop("__metadata__", {})
    data = memoryview(blob)[8 + length:]
    types = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64}
    tensors = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        tensors[name] = np.frombuffer(data[a:b], dtype=types[h["dtype"]]).reshape(h["shape"])
    return metadata, tensors


def group_of(name):
    """A tensor's group for the report: its name with the layer index folded ("h*.mlp.fc.weight.experts")."""
    return re.sub(r"^h\d+\.", "h*.", name)


def initial_router_check(spec, params):
    """For a fresh run at step 0 the routers still hold their initial draws, which camex makes with CounterRng:
    returns (worst relative difference, what was checked) between the dump's routers and this port's draws."""
    worst, count = 0.0, 0
    for l in spec.merged_blocks():
        for index, (lin, o, i, _) in enumerate(spec.linears()):
            # router_seed(seed, 2 m (+ 1)) for the m-th merged block, as uint64
            rng = CounterRng((spec.seed * 1000003 + 2 * spec.ordinal(l) + index) % 2 ** 64, 0)
            j, col = np.meshgrid(np.arange(spec.experts), np.arange(i), indexing="ij")
            prefix = f"h{l}.mlp.{lin}.router."
            draws = ({"w_gate": 0.02 * rng.normal(0, j, col), "w_noise": 0.02 * rng.normal(1, j, col)}
                     if spec.router == "noisy" else {"w_router": 0.01 * rng.normal(2, j, col)})
            for name, expected in draws.items():
                got = params[prefix + name].reshape(expected.shape).astype(np.float64)
                expected32 = expected.astype(np.float32).astype(np.float64)
                worst = max(worst, float(np.max(np.abs(got - expected32)) / np.max(np.abs(expected32))))
                count += 1
    return worst, f"{count} router weight tensors"


def compare(path):
    philox_self_test()
    metadata, tensors = read_safetensors(path)
    if metadata.get("format") != DUMP_FORMAT:
        print(f"twin: {path} is a '{metadata.get('format')}' file, expected {DUMP_FORMAT}")
        return 1
    config = json.loads(metadata["config"])
    step, seed = int(metadata["step"]), int(metadata["seed"])
    spec = Spec(config, vocab=tensors["param/wte"].shape[0])
    merged = "" if spec.dense else (
        f", routing {'sequence' if spec.sequence_routing else 'segment'} (groups of {spec.group_length}), "
        f"{spec.experts} experts, {'top-k ' + str(spec.top_k) if spec.router == 'noisy' else 'SMEAR router'}")
    print(f"twin: {path}: policy {spec.policy}{merged}, {spec.layers} layers x {spec.channels} channels (hidden "
          f"{spec.hidden}), step {step}, seed {seed}, vocab {spec.vocab}")

    inputs, targets = torch.from_numpy(tensors["inputs"].astype(np.int64)), torch.from_numpy(
        tensors["targets"].astype(np.int64))

    def forward(leaves, draws):
        twin = Twin(spec, leaves, draws, training=True)
        ce, aux, logits = twin.forward(inputs, targets)
        return ce, aux, logits, twin

    return check_step(spec, config, metadata, tensors, forward)


def check_step(spec, config, metadata, tensors, forward):
    """The twin's side of a dump: `forward(leaves, draws)` -> (cross-entropy, aux, logits, twin) on float64 leaves of
    every declared tensor, with the dump's draws; then the losses, the probabilities and every gradient against the
    dump's, one line per tensor group, PASS or FAIL. Shared by the trainers' twins."""
    step, seed = int(metadata["step"]), int(metadata["seed"])
    ce_cpp, aux_cpp = float(metadata["cross_entropy"]), float(metadata["aux"])
    params = {k[len("param/"):]: v for k, v in tensors.items() if k.startswith("param/")}
    grads = {k[len("grad/"):]: v for k, v in tensors.items() if k.startswith("grad/")}
    # The dump holds exactly the tensors the configuration declares, in its shapes.
    declared = spec.declarations()
    problems = []
    for name, shape, _, _ in declared:
        if name not in params or name not in grads:
            problems.append(f"{name} declared by the configuration but missing from the dump")
        elif params[name].size != int(np.prod(shape)):
            problems.append(f"{name}: {params[name].shape} in the dump, {shape} declared")
    extra = sorted(set(params) - {d[0] for d in declared})
    problems += [f"{name} in the dump but not declared by the configuration" for name in extra]
    if problems:
        print("FAIL: the dump's tensors do not match the configuration:\n  " + "\n  ".join(problems))
        return 1

    dtype = torch.float64
    leaves = {name: torch.tensor(params[name].astype(np.float64).reshape(shape), requires_grad=True)
              for name, shape, _, _ in declared}
    ce, aux, logits, twin = forward(leaves, CounterDraws(seed, step, dtype))
    (ce + aux).backward()

    failures = 0
    lines = []

    def report(label, error, tolerance, detail=""):
        nonlocal failures
        ok = error <= tolerance
        failures += not ok
        lines.append(f"{'ok  ' if ok else 'FAIL'} {label:<34} worst {error:9.2e}  (tolerance {tolerance:.0e}){detail}")

    ce_t, aux_t = float(ce), float(aux)
    report("cross_entropy", abs(ce_cpp - ce_t) / abs(ce_t), TOLERANCES["cross_entropy"],
           f"  C++ {ce_cpp:.9f}, twin {ce_t:.9f}")
    aux_scale = max(abs(aux_t), 1e-6 * spec.aux)
    report("aux", abs(aux_cpp - aux_t) / aux_scale, TOLERANCES["aux"], f"  C++ {aux_cpp:.6e}, twin {aux_t:.6e}")
    probs_t = torch.softmax(logits.detach(), dim=1).numpy()
    probs_c = tensors["probabilities"].astype(np.float64).reshape(probs_t.shape)
    report("probabilities", float(np.max(np.abs(probs_c - probs_t)) / np.max(probs_t)), TOLERANCES["probabilities"])

    twin_grads = {name: leaves[name].grad.numpy() if leaves[name].grad is not None else np.zeros(shape)
                  for name, shape, _, _ in declared}
    global_scale = max(float(np.max(np.abs(g))) for g in twin_grads.values())
    # A base's gradient is sum_b G_b minus the sum of the experts' (composed.hpp, base_gradient): the roundoff of
    # that difference is relative to the experts' gradients, and the difference itself is 0 up to roundoff where
    # the merge cannot depend on the base (alpha 1, scores summing to 1, M = I as the curvature starts).
    experts_scale = {}
    for name, _, _, _ in declared:
        if name.endswith(".experts"):
            kind = group_of(name)[:-len(".experts")]
            experts_scale[kind] = max(experts_scale.get(kind, 0.0), float(np.max(np.abs(twin_grads[name]))))
    groups = {}
    for name, shape, _, _ in declared:
        t = twin_grads[name].reshape(-1)
        c = grads[name].astype(np.float64).reshape(-1)
        scale = max(float(np.max(np.abs(t))), GRADIENT_FLOOR * global_scale)
        if name.endswith(".base"):
            scale = max(scale, experts_scale.get(group_of(name)[:-len(".base")], 0.0))
        error = float(np.max(np.abs(c - t))) / scale
        worst = groups.get(group_of(name))
        if worst is None or error > worst[0]:
            groups[group_of(name)] = (error, name, float(np.max(np.abs(t))), scale)
    for group, (error, name, largest, scale) in groups.items():
        against = "" if scale == largest else f", against {scale:.2e}"
        report("d/d " + group, error, TOLERANCES["gradient"], f"  at {name} (|g| <= {largest:.2e}{against})")
    if step == 0 and not config.get("resume") and not spec.dense:
        worst, what = initial_router_check(spec, params)
        report("initial routers (CounterRng port)", worst, 1e-6, f"  {what}")
    print("\n".join(lines))
    if spec.top_k < spec.experts and twin.min_top_k_margin < 1e-4:
        print(f"note: a top-k choice had a relative margin of {twin.min_top_k_margin:.1e}: float32 roundoff in the "
              "C++ could select differently there")
    print(f"{'PASS' if failures == 0 else 'FAIL'}: {len(lines)} checks, {failures} outside tolerance")
    return 0 if failures == 0 else 1


# ------------------------------------------------------------------------------------------------------------------
# train

def scheduled_rate(config, step):
    """examples/common/train/adamw.hpp: linear warm-up to lr, then linear decay to final_lr_fraction at `steps`."""
    lr, warmup, total, final = config["lr"], config["warmup"], config["steps"], config["final_lr_fraction"]
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(total, warmup + 1) - warmup
    return lr * (1 - min(1.0, (step - warmup) / span) * (1 - final))


def initial_value(shape, init, generator):
    kind = init[0]
    if kind == "normal":
        return torch.randn(*shape, generator=generator) * init[1]
    if kind == "ones":
        return torch.ones(*shape)
    if kind == "fill":
        return torch.full(shape, float(init[1]))
    if kind == "eye":  # [rank, n, d, d] stacks of scale I
        return (torch.eye(shape[-1]) * init[1]).expand(*shape).clone()
    return torch.zeros(*shape)


def blas_line():
    """The BLAS entries of torch.__config__.show()'s line that names them, and the BLAS libraries this process
    has mapped (what torch really calls: Debian's torch reports BLAS_INFO=generic and uses whichever libblas the
    alternatives system provides, the reference BLAS unless an optimised one is installed)."""
    fields = "no BLAS line in torch.__config__.show()"
    for line in torch.__config__.show().splitlines():
        if "BLAS" in line:
            found = re.findall(r"(?:BLAS|LAPACK)_INFO=[^,]*", line)
            fields = ", ".join(found) if found else line.strip()
            break
    libraries = set()
    try:
        with open("/proc/self/maps") as maps:
            for entry in maps:
                path = entry.split()[-1]
                if re.search(r"lib(open)?blas|libmkl|libblis|liblapack", path):
                    libraries.add(os.path.realpath(path))
    except OSError:
        pass
    return f"{fields}; loaded: {', '.join(sorted(libraries)) or 'none found in /proc/self/maps'}"


def training_device(name, seed):
    """The device `train` runs on and the generator of its batches and draws there. Factory calls inside the
    model then make their tensors on that device too (torch.set_default_device, torch 2.0 or newer)."""
    device = torch.device(name)
    if device.type == "cpu":
        return device, None
    if not hasattr(torch, "set_default_device"):
        raise SystemExit(f"twin: --device {name} needs torch 2.0 or newer, this is {torch.__version__}")
    torch.set_default_device(device)
    return device, torch.Generator(device=device).manual_seed(seed + 1)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_line(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"


def train(config_path, steps, threads, device_name="cpu"):
    with open(config_path) as f:
        config = dict(CONFIG_DEFAULTS)
        config.update(json.load(f))
    spec = Spec(config)
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(spec.seed)
    params, decay, no_decay = {}, [], []
    initial = [(name, initial_value(shape, init, generator).float(), decays)
               for name, shape, decays, init in spec.declarations()]
    device, device_generator = training_device(device_name, spec.seed)
    generator = device_generator or generator
    for name, value, decays in initial:
        t = value.to(device).requires_grad_(True)
        params[name] = t
        (decay if decays else no_decay).append(t)
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": config["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=config["lr"], betas=(0.9, 0.95), eps=1e-8)
    everything = decay + no_decay
    twin = Twin(spec, params, TorchDraws(torch.float32, generator), training=True)
    count = sum(t.numel() for t in everything)
    print(f"twin train: policy {spec.policy}, {spec.layers} layers x {spec.channels} channels (hidden {spec.hidden}), "
          f"{spec.experts} experts, {count} parameters, {spec.batch} x {spec.context} tokens per step, vocab "
          f"{spec.vocab}, torch {torch.__version__} on {device_line(device)}")
    print(f"torch BLAS: {blas_line()}")
    if hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if load > 0.5:
            print(f"note: load average {load:.2f} on {cores} cores before the run: other work competes for them, "
                  "and torch's OpenMP threads slow down sharply when they cannot all run")
    warmup_steps = 2
    total = warmup_steps + steps
    tokens = spec.batch * spec.context
    losses = []
    began = None
    for step in range(total):
        if step == warmup_steps:
            synchronize(device)
            began = time.perf_counter()
        batch = torch.randint(0, spec.vocab, (spec.batch, spec.context + 1), generator=generator, device=device)
        for group in optimiser.param_groups:
            group["lr"] = scheduled_rate(config, step)
        optimiser.zero_grad(set_to_none=True)
        ce, aux, _ = twin.forward(batch[:, :-1], batch[:, 1:])
        (ce + aux).backward()
        if config["clip"] > 0:
            torch.nn.utils.clip_grad_norm_(everything, config["clip"])
        optimiser.step()
        losses.append(float(ce))
    synchronize(device)
    seconds = time.perf_counter() - began
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {total} steps")
    print(f"{steps} timed steps: {steps * tokens / seconds:.0f} tok/s, {1e3 * seconds / steps:.1f} ms/step")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("compare", help="check --dump-step files against the float64 twin")
    c.add_argument("dump", nargs="+", help="one or more dumps (one torch start-up for all)")
    t = sub.add_parser("train", help="train the twin in float32 and report its throughput")
    t.add_argument("config", help="a smoe_lm config.json (keys as smoe_lm's options; missing keys take the defaults)")
    t.add_argument("--steps", type=int, default=20, help="timed steps (after 2 warm-up steps)")
    t.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    t.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    if torch is None:
        print(f"twin: skipped: torch cannot be imported ({type(IMPORT_ERROR).__name__}: {IMPORT_ERROR}); "
              f"this is {sys.executable}, and Debian's python3-torch and python3-numpy are for /usr/bin/python3")
        return SKIP
    if args.mode == "compare":
        results = [compare(path) for path in args.dump]
        if len(results) > 1:
            print(f"twin: {results.count(0)} of {len(results)} dumps pass")
        return 0 if all(r == 0 for r in results) else 1
    return train(args.config, args.steps, args.threads, args.device)


if __name__ == "__main__":
    sys.exit(main())
