"""What the whole-program tests of smoe_vit share (resume_test.py, upcycle_test.py, twin_test.py): a small
Fashion-MNIST-shaped dataset written on the spot (28 x 28 images, 10 classes, gzip-compressed IDX files as Debian
installs them), the options of a tiny ViT on it, running the trainer and reading its safetensors files."""
import gzip
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "smoe_lm"))
from tiny_runs import float32_tensors, read_safetensors, run, run_differences, tiny_model  # noqa: E402,F401 - re-exported for the tests


def write_idx(path, dims, data):
    header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + bytes(data))


def write_dataset(directory, train=200, test=60):
    """Images whose class sets which rows are bright (so a model can learn them), with noise; the same every run."""
    rng = random.Random(5)
    os.makedirs(directory, exist_ok=True)
    for name, count in (("train", train), ("t10k", test)):
        pixels, labels = [], []
        for _ in range(count):
            label = rng.randrange(10)
            labels.append(label)
            for r in range(28):
                bright = (r // 3) % 10 == label
                pixels += [min(255, (180 if bright else 20) + rng.randrange(60)) for _ in range(28)]
        write_idx(os.path.join(directory, f"{name}-images-idx3-ubyte.gz"), [count, 28, 28], pixels)
        write_idx(os.path.join(directory, f"{name}-labels-idx1-ubyte.gz"), [count], labels)


def tiny_vit(work):
    """Writes the dataset under `work` and returns the options of a tiny ViT on it: patches 7 x 7, width 16,
    2 heads, 2 layers, 3 experts, batches of 8 images, 40 validation images."""
    data = os.path.join(work, "fashion")
    write_dataset(data)
    return ["--data", data, "--valid-images", "40", "--patch", "7", "--channels", "16", "--heads", "2", "--layers", "2",
            "--experts", "3", "--batch", "8", "--plot", "0", "--warmup", "2", "--log-every", "2", "--eval-every", "4"]


def with_options(common, options):
    """(common with the values of the options it already has replaced by `options`', the other options): CLI11 takes
    an option once."""
    args, rest = list(common), []
    for i in range(0, len(options), 2):
        if options[i] in args:
            args[args.index(options[i]) + 1] = options[i + 1]
        else:
            rest += options[i:i + 2]
    return args, rest


def kind_and_trainer(usage):
    """(lm or vit, the trainer binary) from the command line of a test that trains either: `script lm|vit BINARY`;
    exits with `usage` otherwise."""
    if len(sys.argv) != 3 or sys.argv[1] not in ("lm", "vit"):
        sys.exit(usage)
    return sys.argv[1], sys.argv[2]


def tiny_options(kind, work, options):
    """The options of the tiny language model (kind lm) or ViT (vit) with its data under `work`, `options` set over
    them."""
    common, rest = with_options(tiny_model(work) if kind == "lm" else tiny_vit(work), options)
    return common + rest
