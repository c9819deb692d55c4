"""What the whole-program tests of smoe_lm share (resume_test.py, signals_test.py, upcycle_test.py, twin_test.py;
smoe_vit's through tiny_images.py): a small WikiText-style corpus written on the spot, the options of a tiny model
on it, running the trainer, reading its safetensors files, and comparing how two runs ended."""
import array
import json
import os
import random
import subprocess


def write_corpus(directory):
    """wiki.{train,valid,test}.tokens of made-up sentences, the same on every run."""
    rng = random.Random(7)
    subjects = ["the expert", "a router", "the merged layer", "every token", "the base", "a segment"]
    verbs = ["merges", "routes", "drops", "keeps", "scales", "reads"]
    objects = ["the deltas", "its scores", "the curvature", "a mask", "the gradient", "two experts"]
    for part, lines in (("train", 1500), ("valid", 300), ("test", 300)):
        with open(os.path.join(directory, f"wiki.{part}.tokens"), "w") as f:
            f.write(" = Heading = \n\n")
            for _ in range(lines):
                f.write(f" {rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} . \n")


def tiny_model(work):
    """Writes the corpus under `work` and returns the options of a tiny model on it (with its own tokenizer cache):
    context 16, width 16, 2 heads, 2 layers, 3 experts, segments of 8, batch 4, vocabulary 64."""
    data = os.path.join(work, "wikitext")
    os.makedirs(data, exist_ok=True)
    write_corpus(data)
    return ["--data", data, "--cache-dir", os.path.join(work, "cache"), "--vocab", "64", "--context", "16",
            "--channels", "16", "--heads", "2", "--layers", "2", "--experts", "3", "--segment", "8", "--batch", "4",
            "--plot", "0"]


def run(command, what):
    """The command's standard output, or None after printing why it failed."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"FAIL {what}: {' '.join(command)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return None
    return result.stdout


def safetensors_parts(path):
    """(header, data) of a safetensors file: the JSON header as a dict, and the bytes after it."""
    with open(path, "rb") as f:
        blob = f.read()
    length = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + length]), blob[8 + length:]


def read_safetensors(path):
    """(metadata, {name: bytes}) of a safetensors file."""
    header, data = safetensors_parts(path)
    return (header.get("__metadata__", {}),
            {k: data[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in header.items() if k != "__metadata__"})


def float32_tensors(path):
    """{name: list of floats} of a safetensors file's F32 tensors."""
    header, data = safetensors_parts(path)
    out = {}
    for name, t in header.items():
        if name != "__metadata__" and t["dtype"] == "F32":
            values = array.array("f")
            values.frombytes(data[t["data_offsets"][0]:t["data_offsets"][1]])
            out[name] = values.tolist()
    return out


def curve_numbers(path):
    """The rows of a curves.csv without their timing columns: what two runs of the same steps must share."""
    with open(path) as f:
        return [",".join(line.strip().split(",")[:7]) for line in f]


def run_differences(a, b):
    """How the runs in folders a and b ended apart: a list of what differs (empty when every checkpoint tensor and
    every number of the curves is identical), the number of tensors, and the number of curve rows."""
    ta = read_safetensors(os.path.join(a, "checkpoint.safetensors"))[1]
    tb = read_safetensors(os.path.join(b, "checkpoint.safetensors"))[1]
    problems = []
    differing = sorted(k for k in ta if ta[k] != tb.get(k))
    if set(ta) != set(tb) or differing:
        problems.append(f"tensors differ: {differing[:5]} (of {len(ta)})")
    ca, cb = curve_numbers(os.path.join(a, "curves.csv")), curve_numbers(os.path.join(b, "curves.csv"))
    if ca != cb:
        problems.append("curves differ (first run | second run):\n" +
                        "\n".join(f"{x}  |  {y}" for x, y in zip(ca, cb) if x != y))
    return problems, len(ta), len(ca) - 1
