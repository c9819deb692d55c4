#!/usr/bin/python3
"""Data-parallel training of the language model: what it gains here, what it sends, and how it would scale.

1. Throughput here: the README's demo model (smoe_lm's defaults, --policy POLICY) for --steps steps on one process
   (a thread per core) and on two (mpirun -np 2, one thread each, each bound to its core): the gradients in one
   bucket sent after the backward (--bucket-mb 1e6), in the default buckets sent while the backward goes on, and so
   with --shard-optimizer (with the AdamW moments rank 0 holds). For each, the trainer's own summary rate (training
   tokens over training seconds) and, on two, the time rank 0 spends in the gradient reduction a step (packing, the
   rank-ordered sums, and MPI: the transfers and the wait for the other rank's backward), of it after the backward;
   the best of --rounds rounds.
2. Bytes: for each model size (the tests' tiny model, with a vocabulary of 128 as Brown needs more than 64; the
   demo model; a GPT-2-small-sized SMoE: 12 layers of 768 channels, 12 heads, context 1024, 8 experts) and policy, the gradient entries the trainer reduces a step
   (smoe_lm --plan: the model as built, routers and curvature factors included, without training) and the bytes
   each of P processes sends: 2 (P - 1) / P of them, as a ring all-reduce or the reduce-scatter and all-gather of
   common/parallel/gradient_reduction.hpp send. The GPT-2-small size keeps the trainer's vocabulary (--vocab); its
   rows for GPT-2's 50257 tokens add (50257 - vocab) x 768 entries, computed here.
3. Estimate for the GPT-2-small-sized SMoE at 8 GPUs on one node and 64 GPUs on eight nodes, from those bytes and
   published link rates (ESTIMATE below, each with its source), with and without overlapping the reduction with
   the backward: efficiency = compute / (compute + communication), or compute / max(compute, communication).
   Compute is the model's FLOPs (the trainer's count: the dense model's; merging 8 experts once per 256-token
   segment adds about 1 %) at an assumed share of the GPU's peak.

Writes scaling.csv, scaling-bytes.csv, scaling-estimate.csv and scaling.png (gnuplot) under --out.

usage: scaling.py BUILD_DIR [--steps 60] [--rounds 2] [--policy ties-ca] [--out runs/scaling]"""
import argparse
import os
import re
import subprocess
import sys

sys.dont_write_bytecode = True  # importing trainers.py leaves no __pycache__ in the source tree
from trainers import run  # noqa: E402

MPI = ["mpirun", "--oversubscribe", "--mca", "pml", "ob1", "--mca", "btl", "self,vader", "--mca",
       "btl_vader_single_copy_mechanism", "none", "-x", "OMPI_ALLOW_RUN_AS_ROOT", "-x", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"]
ROOT_OK = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}

TINY = ["--vocab", "128", "--context", "16", "--channels", "16", "--heads", "2", "--layers", "2", "--experts", "3",
        "--segment", "8", "--batch", "4"]
GPT2_SMALL = ["--context", "1024", "--channels", "768", "--heads", "12", "--layers", "12", "--experts", "8",
              "--segment", "256", "--batch", "1"]
SIZES = [("tiny (tests)", TINY), ("demo (defaults)", []), ("GPT-2 small, 8 experts", GPT2_SMALL)]
POLICIES = ["dense", "smear", "ties", "ties-ca", "dare-ca", "dynamic"]

# Published figures the estimate rests on (per GPU, one direction), and the share of them a large all-reduce reaches.
ESTIMATE = {
    "nvlink_GBps": 450.0,      # NVIDIA H100 SXM: NVLink 4, 900 GB/s bidirectional per GPU
    "network_GBps": 50.0,      # one ConnectX-7 NDR 400 Gb/s InfiniBand port per GPU (DGX H100: 8 per node)
    "gpus_per_node": 8,
    "link_share": 0.8,         # NCCL's all-reduce bus bandwidth reaches about 80 % of the link on large messages
    "fp32_TFLOPs": 67.0,       # H100 SXM dense fp32 peak (camex's default: cuBLAS SGEMM)
    "tf32_TFLOPs": 494.7,      # H100 SXM dense TF32 tensor-core peak (camex::allow_tf32(true))
    "model_flops_share": 0.4,  # the share of the peak the model's FLOPs run at (assumed; not measured on a GPU)
    "tokens_per_gpu": 16 * 1024,
    "gpt2_vocab": 50257,
}


def throughput(build, a):
    trainer = os.path.join(build, "examples", "smoe_lm", "smoe_lm")
    rows = []
    for processes, overlapped, sharded in ((1, False, False), (2, False, False), (2, True, False), (2, True, True)):
        best = None
        for r in range(a.rounds):
            name = f"{processes}{'-overlapped' if overlapped else ''}{'-sharded' if sharded else ''}"
            out = os.path.join(a.out, f"run-{name}-{r}")
            args = [trainer, "--policy", a.policy, "--steps", str(a.steps), "--out", out, "--plot", "0",
                    "--host-threads", "all"] + (["--shard-optimizer"] if sharded else []) + \
                ([] if overlapped else ["--bucket-mb", "1e6"])
            env = dict(os.environ, **ROOT_OK)
            if processes == 1:
                env["OMP_NUM_THREADS"] = str(os.cpu_count())
                command = args
            else:
                command = MPI + ["-np", "2", "--bind-to", "core", "-x", "OMP_NUM_THREADS=1"] + args
            text = run(command, env)
            rate = float(re.search(r"training ([0-9.]+) tokens/s", text).group(1))
            found = re.search(r"gradient reduction: ([0-9.]+) ms a step on rank 0, ([0-9.]+) of them after the backward "
                              r"\(what it did not hide\), ([0-9.]+) in MPI", text)
            reduction, after, in_mpi = (float(found.group(1)), float(found.group(2)), float(found.group(3))) if found \
                else (0.0, 0.0, 0.0)
            sent = re.search(r"each sends ([0-9.]+) MB of gradients a step in ([0-9]+) buckets", text)
            shape = re.search(r"([0-9]+) x ([0-9]+) tokens per step", text)
            step_ms = 1e3 * int(shape.group(1)) * int(shape.group(2)) / rate
            held = re.search(r"rank 0 holds ([0-9.]+) MB of AdamW moments", text)
            row = (processes, int(sent.group(2)) if sent else 0, int(sharded), rate, reduction, after, in_mpi,
                   float(sent.group(1)) if sent else 0.0, round(step_ms, 2), float(held.group(1)) if held else None)
            print(f"  {processes} process(es){', overlapped' if overlapped else ''}"
                  f"{', optimiser sharded' if sharded else ''}, round {r + 1}: {rate:.0f} tokens/s, reduction "
                  f"{reduction:.2f} ms a step ({after:.2f} after the backward, {in_mpi:.2f} in MPI)", flush=True)
            if best is None or rate > best[3]:
                best = row
        rows.append(best)
    return rows


def planned_entries(build, options):
    text = run([os.path.join(build, "examples", "smoe_lm", "smoe_lm")] + options + ["--plan", "--plot", "0"],
                       dict(os.environ))
    entries = int(re.search(r"plan: ([0-9]+) gradient entries", text).group(1))
    flops = float(re.search(r"([0-9.]+) MFLOP per token", text).group(1)) * 1e6
    vocab = int(re.search(r"vocab ([0-9]+)\)", text).group(1))
    return entries, flops, vocab


def plot(csv, png, title):
    script = ("set terminal pngcairo size 1200,700\nset output '" + png + "'\nset datafile separator ','\n"
              "set title '" + title + "'\nset style data histograms\nset style fill solid 0.8\n"
              "set key outside top center horizontal\nset bmargin 9\nset grid ytics\n"
              "set ylabel 'scaling efficiency'\nset yrange [0:1.05]\nset xtics rotate by 45 right font ',9'\n"
              "plot '" + csv + "' using 5:xtic(1) skip 1 title 'no overlap', '' using 6 skip 1 title 'overlapped'\n")
    ok = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True).returncode == 0
    print(f"{csv} and {png}" if ok else f"{csv} (gnuplot failed or is missing: no PNG)")


def write_csv(path, header, rows):
    with open(path + ".tmp", "w") as f:
        f.write(header + "\n")
        for row in rows:
            f.write(",".join(str(v) for v in row) + "\n")
    os.replace(path + ".tmp", path)


def main():
    parser = argparse.ArgumentParser(usage=__doc__.split("usage: ")[1])
    parser.add_argument("build")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--policy", default="ties-ca")
    parser.add_argument("--out", default="runs/scaling")
    a = parser.parse_args()
    os.makedirs(a.out, exist_ok=True)

    print(f"throughput of the demo model ({a.policy}), {a.steps} steps, best of {a.rounds}:", flush=True)
    rates = throughput(a.build, a)
    one, two, overlapped, sharded = rates
    params_MB = 2 * 4 * planned_entries(a.build, ["--policy", a.policy])[0] / 1e6  # one process: both moments, float
    rates = [row[:-1] + (row[-1] if row[-1] is not None else round(params_MB, 2),) for row in rates]
    write_csv(os.path.join(a.out, "scaling.csv"), "processes,buckets,optimiser_sharded,tokens_per_second,"
              "reduction_ms_per_step,of_it_after_backward_ms,of_it_in_mpi_ms,sent_MB_per_step,ms_per_step,"
              "adamw_moments_MB_on_rank_0", rates)
    print(f"  speed-up on 2 processes: {two[3] / one[3]:.2f}x in one bucket (reduction {two[4]:.2f} ms, {two[6]:.2f} in "
          f"MPI, of a {two[8]:.1f} ms step); {overlapped[3] / one[3]:.2f}x in {overlapped[1]} buckets overlapped "
          f"(reduction {overlapped[4]:.2f} ms, {overlapped[5]:.2f} after the backward); with the optimiser sharded "
          f"{sharded[3] / one[3]:.2f}x, reduction {sharded[4]:.2f} ms, rank 0 holding {sharded[9]:.2f} MB of moments "
          f"against {two[9]:.2f}")

    print("gradient entries a step (smoe_lm --plan):", flush=True)
    bytes_rows, gpt2 = [], {}
    for size, options in SIZES:
        for policy in POLICIES:
            entries, flops, vocab = planned_entries(a.build, options + ["--policy", policy])
            if size.startswith("GPT-2"):  # GPT-2's vocabulary: its embedding rows, and the tied head's FLOPs
                entries += (ESTIMATE["gpt2_vocab"] - vocab) * 768
                flops += 3 * 2 * 768 * (ESTIMATE["gpt2_vocab"] - vocab)
                gpt2[policy] = (entries, flops)
            megabytes = 4 * entries / 1e6
            bytes_rows.append((size, policy, entries, round(megabytes, 3), round(megabytes * 2 * 1 / 2, 3),
                               round(megabytes * 2 * 7 / 8, 3), round(megabytes * 2 * 63 / 64, 3)))
            print(f"  {size:24s} {policy:8s} {entries:>12d} entries, {megabytes:10.2f} MB", flush=True)
    write_csv(os.path.join(a.out, "scaling-bytes.csv"),
              "size,policy,gradient_entries,gradient_MB,sent_MB_P2,sent_MB_P8,sent_MB_P64", bytes_rows)

    e = ESTIMATE
    estimate_rows = []
    for policy, (entries, flops_per_token) in gpt2.items():
        for precision, peak in (("fp32", e["fp32_TFLOPs"]), ("tf32", e["tf32_TFLOPs"])):
            compute_s = e["tokens_per_gpu"] * flops_per_token / (peak * 1e12 * e["model_flops_share"])
            # Across nodes a ring all-reduce is split over as many rings as the node has NICs, each crossing between
            # nodes through its own NIC (as NCCL's channels do): the bus rate is the node's network rate, bounded by
            # NVLink within the node.
            across = min(e["nvlink_GBps"], e["gpus_per_node"] * e["network_GBps"])
            for gpus, link in ((8, e["nvlink_GBps"]), (64, across)):
                comm_s = 4 * entries * 2 * (gpus - 1) / gpus / (link * 1e9 * e["link_share"])
                estimate_rows.append((f"{policy} {precision} {gpus} GPUs", round(1e3 * compute_s, 2),
                                      round(1e3 * comm_s, 2), gpus, round(compute_s / (compute_s + comm_s), 3),
                                      round(compute_s / max(compute_s, comm_s), 3)))
    csv = os.path.join(a.out, "scaling-estimate.csv")
    write_csv(csv, "case,compute_ms,communication_ms,gpus,efficiency,efficiency_overlapped", estimate_rows)
    for row in estimate_rows:
        print(f"  {row[0]:28s} compute {row[1]:8.2f} ms, communication {row[2]:8.2f} ms: {row[4]:.2f} ({row[5]:.2f} overlapped)")
    plot(csv, os.path.join(a.out, "scaling.png"), "GPT-2-small-sized SMoE (8 experts): estimated data-parallel efficiency")


if __name__ == "__main__":
    main()
