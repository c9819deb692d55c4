#!/usr/bin/env python3
"""ctest smoe_vit.upcycle: a dense ViT trained by smoe_vit upcycles into an SMoE ViT the way the CAMEx code upcycles:
after --upcycle-from, every expert and base of each merged MLP tensor holds the dense MLP's tensor and every other
tensor the dense model's, and since every delta is zero each merge is its base, so the merged model's cross-entropy
on a batch equals the dense model's on the same batch at step 0 (relative 1e-5: float32 products blocked
differently). For TIES-CA per image in every block and dynamic merging per token in the last block.

usage: upcycle_test.py SMOE_VIT_BINARY"""
import os
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_images import read_safetensors, run, tiny_vit  # noqa: E402


def main():
    binary, failures = sys.argv[1], 0
    with tempfile.TemporaryDirectory() as tmp:
        common = tiny_vit(tmp) + ["--seed", "3", "--steps", "8"]
        dense = os.path.join(tmp, "dense")
        if run([binary] + common + ["--policy", "dense", "--out", dense], "dense") is None:
            sys.exit(1)
        checkpoint = os.path.join(dense, "checkpoint.safetensors")
        _, trained = read_safetensors(checkpoint)
        reference = os.path.join(tmp, "dense-step0.safetensors")
        if run([binary] + common + ["--policy", "dense", "--out", os.path.join(tmp, "d0"), "--upcycle-from", checkpoint,
                                    "--dump-step", reference], "dense, step 0") is None:
            sys.exit(1)
        dense_meta, _ = read_safetensors(reference)
        for name, extra in {"ties-ca": ["--policy", "ties-ca", "--routing", "image"],
                            "dynamic": ["--policy", "dynamic", "--routing", "token", "--moe-layers", "last-1"]}.items():
            dump = os.path.join(tmp, name + ".safetensors")
            out = run([binary] + common + extra + ["--out", os.path.join(tmp, name), "--upcycle-from", checkpoint,
                                                   "--dump-step", dump], name)
            if out is None:
                failures += 1
                continue
            meta, tensors = read_safetensors(dump)
            checked = 0
            for key, value in tensors.items():
                if not key.startswith("param/"):
                    continue
                key = key[len("param/"):]
                if key in trained:
                    source = trained[key]
                elif key.rsplit(".", 1)[-1] in ("experts", "base"):
                    source = trained[key.rsplit(".", 1)[0]]
                    source = source * (len(value) // len(source))
                else:
                    continue  # curvature factors and routers keep their own initialisation
                checked += 1
                if value != source:
                    print(f"FAIL {name}: {key} does not hold the dense model's values")
                    failures += 1
            ce, ce_dense = float(meta["cross_entropy"]), float(dense_meta["cross_entropy"])
            if abs(ce - ce_dense) > 1e-5 * abs(ce_dense):
                print(f"FAIL {name}: cross-entropy {ce} after upcycling, dense model {ce_dense}")
                failures += 1
            else:
                print(f"ok {name}: {checked} tensors from the dense model; cross-entropy {ce:.7f} = dense {ce_dense:.7f}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
