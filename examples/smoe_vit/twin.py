#!/usr/bin/python3
"""The PyTorch twin of smoe_vit's model (examples/smoe_vit/model.hpp with the MLPs of examples/common/nn/mlp.hpp and
the camex merge policies and routers of examples/common/moe, whose rules it reads from policies.json).

  twin.py compare DUMP [DUMP ...]
      DUMP is what `smoe_vit <options> --dump-step DUMP` writes: the configuration, every trainable tensor, one step's
      batch (the augmented, normalised images and their labels), the probabilities, cross-entropy and aux loss, and
      every gradient of their sum, all from the float32 C++ model. The twin rebuilds the ViT from the configuration
      and the parameters in float64, draws camex's random numbers (router noise, DARE masks) through the port in
      examples/smoe_lm/twin.py, runs the forward, takes every gradient by autograd and compares, with the language
      model twin's tolerances and report (one line per tensor group, PASS or FAIL). Exit 0 on pass, 1 on a mismatch,
      77 when torch cannot be imported.

  twin.py train CONFIG.json --steps N [--threads T] [--device cuda]
      The same ViT in float32, randomly initialised, trained with torch.optim.AdamW under smoe_vit's schedule on
      random 28 x 28 images and labels of the configuration's batch; prints images/s and ms/step over the timed
      steps (after two warm-up steps) and torch's BLAS line: the PyTorch side of a throughput comparison with
      smoe_vit. Random draws come from torch's generator; this mode does not reproduce the C++ numbers. --device
      cuda trains on the GPU, as the language model twin's does.

The merged MLPs, the routers and the policies are the language model twin's (one implementation of camex's merges
in PyTorch); what is the ViT's is here: patches cut row-major, the embedding, the class token or mean pooling, the
positions, attention without a mask, the head. Routing per image makes each image one routing group over its
tokens' mean; per token, each token its own group routed on itself.
"""
import argparse
import importlib.util
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("lm_twin", os.path.join(HERE, "..", "smoe_lm", "twin.py"))
lm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lm)
torch, F, np = lm.torch, lm.F, lm.np

DUMP_FORMAT = "camex.smoe_vit.dump.v1"

# examples/smoe_vit/config.hpp: the ViT's part and its defaults of the shared parts.
CONFIG_DEFAULTS = {
    "patch": 7, "channels": 64, "heads": 4, "layers": 4, "hidden": 0, "pooling": "cls", "moe_layers": "all",
    "policy": "ties-ca", "experts": 4, "top_k": 0, "routing": "image", "alpha": 0.0, "density": 0.2, "drop": 0.1,
    "gamma": 0.5, "aux": 1e-2, "rank": 2, "router_noise": True, "seed": 1, "batch": 128,
}


def merged_blocks(placement, layers):
    """config.hpp's merged_blocks: "all", "every-n" (blocks n-1, 2n-1, ...) or "last-n"."""
    if placement == "all":
        return list(range(layers))
    kind, n = placement.rsplit("-", 1)
    n = int(n)
    if kind == "every":
        return [l for l in range(layers) if (l + 1) % n == 0]
    return list(range(layers - n, layers))


class VitSpec(lm.Spec):
    """What the ViT is, from a dump's configuration and its image size; the merged MLPs' fields as lm.Spec's."""

    def __init__(self, config, rows, cols, classes):  # noqa: D107 - lm.Spec's fields, set from the ViT's options
        c = dict(CONFIG_DEFAULTS)
        c.update(config)
        self.config = c
        rule = lm.REGISTRY[c["policy"]]
        self.policy = c["policy"]
        self.dense = not rule["experts"]
        self.rows, self.cols, self.patch, self.classes = rows, cols, int(c["patch"]), classes
        self.channels, self.heads, self.layers = int(c["channels"]), int(c["heads"]), int(c["layers"])
        self.hidden = int(c["hidden"]) or 2 * self.channels
        self.images = int(c["batch"])
        self.cls = c["pooling"] == "cls"
        self.patches = (rows // self.patch) * (cols // self.patch)
        self.length = self.patches + (1 if self.cls else 0)
        self.blocks = [] if self.dense else merged_blocks(c["moe_layers"], self.layers)
        self.experts = int(c["experts"])
        k = int(c["top_k"]) or int(rule["top_k"])
        self.top_k = k if k > 0 else self.experts
        self.router_noise = bool(c["router_noise"])
        self.aux = float(c["aux"])
        # Routing groups as lm.Twin reads them: per image, B sequences of L tokens; per token, B L sequences of one.
        self.sequence_routing = True
        self.token_routing = c["routing"] == "token"
        self.batch = self.images * self.length if self.token_routing else self.images
        self.group_length = 1 if self.token_routing else self.length
        self.segments = 1
        self.groups = self.batch
        alpha = float(c["alpha"])
        self.alpha = alpha if rule["alpha"] == "option" and alpha > 0 else float(rule["default_alpha"])
        self.base, self.mask, self.curvature, self.router = rule["base"], rule["mask"], rule["curvature"], rule["router"]
        self.rank, self.density, self.drop, self.gamma = int(c["rank"]), float(c["density"]), float(c["drop"]), float(c["gamma"])
        self.seed = int(c["seed"])

    def merged_blocks(self):
        return self.blocks

    def declarations(self):
        """Every trainable tensor in the C++ order: model.hpp's arena (its own tensors, each block's, the head), then
        each merged block's library components."""
        c, h, n, l_ = self.channels, self.hidden, self.experts, self.length
        proj_std = 0.02 / math.sqrt(2.0 * self.layers)
        out = [("patch.weight", [c, self.patch * self.patch], True, ("normal", 0.02)), ("patch.bias", [c], False, ("zeros",))]
        if self.cls:
            out.append(("cls", [1, c], False, ("normal", 0.02)))
        out.append(("pos", [l_, c], False, ("normal", 0.02)))
        for l in range(self.layers):
            p = f"h{l}."
            out += [(p + "ln1.weight", [c], False, ("ones",)), (p + "ln1.bias", [c], False, ("zeros",)),
                    (p + "attn.weight", [3 * c, c], True, ("normal", 0.02)), (p + "attn.bias", [3 * c], False, ("zeros",)),
                    (p + "attn.proj.weight", [c, c], True, ("normal", proj_std)),
                    (p + "attn.proj.bias", [c], False, ("zeros",)),
                    (p + "ln2.weight", [c], False, ("ones",)), (p + "ln2.bias", [c], False, ("zeros",))]
            for lin, o, i, std in self.linears():
                q = f"{p}mlp.{lin}."
                if l not in self.blocks:
                    out += [(q + "weight", [o, i], True, ("normal", std)), (q + "bias", [o], False, ("zeros",))]
                    continue
                out.append((q + "weight.experts", [n, o, i], True, ("normal", std)))
                if self.has_base(l):
                    out.append((q + "weight.base", [1, o, i], True, ("normal", std)))
                out.append((q + "bias.experts", [n, o], False, ("zeros",)))
                if self.has_base(l):
                    out.append((q + "bias.base", [1, o], False, ("zeros",)))
        out += [("lnf.weight", [c], False, ("ones",)), ("lnf.bias", [c], False, ("zeros",)),
                ("head.weight", [self.classes, c], True, ("normal", 0.02)), ("head.bias", [self.classes], False, ("zeros",))]
        for l in self.blocks:
            for lin, o, i, _ in self.linears():
                q = f"h{l}.mlp.{lin}."
                for part, cols in (("weight", i), ("bias", 1)):
                    if self.curvature:
                        _, modes = self.curvature_modes(o, cols)
                        scale = self.rank ** (-1.0 / len(modes)) if modes else 1.0
                        for _, name, d in modes:
                            out.append((f"{q}{part}.{name}", [self.rank, n, d, d], False, ("eye", scale)))
                r = q + "router."
                if self.router == "noisy":
                    out += [(r + "w_gate", [n, i], False, ("normal", 0.02)), (r + "w_noise", [n, i], False, ("normal", 0.02))]
                else:
                    out += [(r + "ln_gain", [i], False, ("ones",)), (r + "ln_bias", [i], False, ("zeros",)),
                            (r + "w_router", [n, i], False, ("normal", 0.01)),
                            (r + "column_gain", [n, i], False, ("fill", 0.01)), (r + "column_bias", [n, i], False, ("zeros",))]
        return out


class VitTwin(lm.Twin):
    """smoe_vit's ViT over a dict of parameter tensors; the merged MLPs are lm.Twin's."""

    def attention(self, qkv):
        s = self.spec
        c, heads = s.channels, s.heads
        d = c // heads
        q, k, v = (t.reshape(s.images, s.length, heads, d).transpose(1, 2) for t in qkv.split(c, dim=1))
        att = torch.softmax((q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d)), dim=-1)  # no mask
        return (att @ v).transpose(1, 2).reshape(s.images * s.length, c)

    def forward(self, images, labels):
        """(mean cross-entropy, summed aux losses, logits [B, K]) for images [B, rows, cols] and labels [B]."""
        s, p = self.spec, self.p
        c, pp, b = s.channels, s.patch, s.images
        self.chain = {}
        patches = images.reshape(b, s.rows // pp, pp, s.cols // pp, pp).permute(0, 1, 3, 2, 4).reshape(b * s.patches, pp * pp)
        tokens = F.linear(patches, p["patch.weight"], p["patch.bias"]).view(b, s.patches, c)
        if s.cls:
            tokens = torch.cat([p["cls"].view(1, 1, c).expand(b, 1, c), tokens], dim=1)
        x = (tokens + p["pos"].view(1, s.length, c)).reshape(b * s.length, c)
        aux = x.sum() * 0
        for l in range(s.layers):
            q = f"h{l}."
            h = F.layer_norm(x, (c,), p[q + "ln1.weight"], p[q + "ln1.bias"], 1e-5)
            x = x + F.linear(self.attention(F.linear(h, p[q + "attn.weight"], p[q + "attn.bias"])),
                             p[q + "attn.proj.weight"], p[q + "attn.proj.bias"])
            y, a = self.mlp(l, F.layer_norm(x, (c,), p[q + "ln2.weight"], p[q + "ln2.bias"], 1e-5))
            x = x + y
            aux = aux + a
        h = F.layer_norm(x, (c,), p["lnf.weight"], p["lnf.bias"], 1e-5).view(b, s.length, c)
        pooled = h[:, 0] if s.cls else h.mean(1)
        logits = F.linear(pooled, p["head.weight"], p["head.bias"])
        return F.cross_entropy(logits, labels.long()), aux, logits


def compare(path):
    lm.philox_self_test()
    metadata, tensors = lm.read_safetensors(path)
    if metadata.get("format") != DUMP_FORMAT:
        print(f"twin: {path} is a '{metadata.get('format')}' file, expected {DUMP_FORMAT}")
        return 1
    config = json.loads(metadata["config"])
    images = torch.from_numpy(tensors["images"].astype(np.float64))
    labels = torch.from_numpy(tensors["labels"].astype(np.int64))
    classes = tensors["param/head.bias"].shape[0]
    spec = VitSpec(config, images.shape[1], images.shape[2], classes)
    merged = "" if spec.dense else (
        f", experts in blocks {spec.blocks}, routing per {'token' if spec.token_routing else 'image'}, {spec.experts} "
        f"experts, {'top-k ' + str(spec.top_k) if spec.router == 'noisy' else 'SMEAR router'}")
    print(f"twin: {path}: policy {spec.policy}{merged}, {spec.layers} layers x {spec.channels} channels (hidden "
          f"{spec.hidden}), patches {spec.patch}x{spec.patch}, {'class token' if spec.cls else 'mean pooling'}, step "
          f"{metadata['step']}, seed {metadata['seed']}")

    def forward(leaves, draws):
        twin = VitTwin(spec, leaves, draws, training=True)
        ce, aux, logits = twin.forward(images, labels)
        return ce, aux, logits, twin

    return lm.check_step(spec, config, metadata, tensors, forward)


def train(config_path, steps, threads, device_name="cpu"):
    with open(config_path) as f:
        config = dict(CONFIG_DEFAULTS)
        config.update({"lr": 2e-3, "warmup": 200, "steps": 4000, "final_lr_fraction": 0.1, "weight_decay": 0.05,
                       "clip": 1.0})
        config.update(json.load(f))
    spec = VitSpec(config, 28, 28, 10)
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(spec.seed)
    params, decay, no_decay = {}, [], []
    initial = [(name, lm.initial_value(shape, init, generator).float(), decays)
               for name, shape, decays, init in spec.declarations()]
    device, device_generator = lm.training_device(device_name, spec.seed)
    generator = device_generator or generator
    for name, value, decays in initial:
        t = value.to(device).requires_grad_(True)
        params[name] = t
        (decay if decays else no_decay).append(t)
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": config["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=config["lr"], betas=(0.9, 0.95), eps=1e-8)
    everything = decay + no_decay
    twin = VitTwin(spec, params, lm.TorchDraws(torch.float32, generator), training=True)
    print(f"twin train: policy {spec.policy} ({'dense' if spec.dense else 'per ' + ('token' if spec.token_routing else 'image') + ' routing, experts in blocks ' + str(spec.blocks)}), "
          f"{spec.layers} layers x {spec.channels} channels (hidden {spec.hidden}), patches {spec.patch}x{spec.patch}, "
          f"{sum(t.numel() for t in everything)} parameters, {spec.images} images per step, torch {torch.__version__} "
          f"on {lm.device_line(device)}")
    print(f"torch BLAS: {lm.blas_line()}")
    warmup_steps, losses, began = 2, [], None
    for step in range(warmup_steps + steps):
        if step == warmup_steps:
            lm.synchronize(device)
            began = time.perf_counter()
        images = torch.randn(spec.images, 28, 28, generator=generator, device=device)
        labels = torch.randint(0, 10, (spec.images,), generator=generator, device=device)
        for group in optimiser.param_groups:
            group["lr"] = lm.scheduled_rate(config, step)
        optimiser.zero_grad(set_to_none=True)
        ce, aux, _ = twin.forward(images, labels)
        (ce + aux).backward()
        if config["clip"] > 0:
            torch.nn.utils.clip_grad_norm_(everything, config["clip"])
        optimiser.step()
        losses.append(float(ce))
    lm.synchronize(device)
    seconds = time.perf_counter() - began
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps")
    print(f"{steps} timed steps: {steps * spec.images / seconds:.0f} img/s, {1e3 * seconds / steps:.1f} ms/step")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("compare", help="check --dump-step files against the float64 twin")
    c.add_argument("dump", nargs="+", help="one or more dumps (one torch start-up for all)")
    t = sub.add_parser("train", help="train the twin in float32 and report its throughput")
    t.add_argument("config", help="a smoe_vit config.json (keys as smoe_vit's options; missing keys take the defaults)")
    t.add_argument("--steps", type=int, default=20, help="timed steps (after 2 warm-up steps)")
    t.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    t.add_argument("--device", default="cpu", help="cpu (default) or cuda (torch 2.0 or newer)")
    args = parser.parse_args()
    if torch is None:
        print(f"twin: skipped: torch cannot be imported ({type(lm.IMPORT_ERROR).__name__}: {lm.IMPORT_ERROR}); "
              f"this is {sys.executable}, and Debian's python3-torch and python3-numpy are for /usr/bin/python3")
        return lm.SKIP
    if args.mode == "train":
        return train(args.config, args.steps, args.threads, args.device)
    results = [compare(path) for path in args.dump]
    if len(results) > 1:
        print(f"twin: {results.count(0)} of {len(results)} dumps pass")
    return 0 if all(r == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
