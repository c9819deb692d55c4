"""Joins the three parts of one benchmarks/run (ceilings, camex's Google Benchmark JSON, PyTorch's JSON) into the
table people read and the JSON file tools read. The JSON is written atomically (temporary file, flush, rename)."""
import argparse
import json
import os
import sys
import tempfile


def camex_cases(path):
    """Best and median real time per case from Google Benchmark's JSON (aggregates of repetitions), in seconds.
    Without repetitions there is one run, which is both."""
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
    with open(path) as f:
        data = json.load(f)
    cases = {}
    for bench in data["benchmarks"]:
        statistic = bench.get("aggregate_name") if bench.get("run_type") == "aggregate" else "single"
        if statistic not in ("min", "median", "single"):
            continue
        name = bench.get("run_name", bench["name"]).removesuffix("/real_time")
        case = cases.setdefault(name, {"bytes": bench["bytes"], "bytes_read": bench["bytes_read"],
                                       "bytes_written": bench["bytes_written"], "flops": bench["flops"]})
        seconds = bench["real_time"] * scale[bench["time_unit"]]
        if statistic in ("min", "single"):
            case["camex_s"] = seconds
        if statistic in ("median", "single"):
            case["camex_median_s"] = seconds
            # Where the time of a median repetition went, for cases that time their parts (counters ms_*).
            parts = {k.removeprefix("ms_"): v for k, v in bench.items() if k.startswith("ms_")}
            if parts:
                case["breakdown_ms"] = parts
    return cases, data.get("context", {})


def write_atomically(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def best_ceilings(paths):
    """The ceilings of several measurements in one run, each rate the highest measured: a neighbour's load during one
    of them lowers a ceiling, and a lowered ceiling flatters every kernel judged against it."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    best = dict(runs[0])
    for key, value in runs[0].items():
        if key.endswith("_GBps") or key.endswith("_GFLOPs"):
            best[key] = max(run[key] for run in runs)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ceilings", required=True, nargs="+",
                        help="one or more runs of camex_ceilings (before and after the kernels): each rate is the best of them")
    parser.add_argument("--camex", required=True)
    parser.add_argument("--torch", required=True)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()

    ceilings = best_ceilings(args.ceilings)
    with open(args.torch) as f:
        torch = json.load(f)
    cases, context = camex_cases(args.camex)
    torch_by_name = {c["name"]: c for c in torch["cases"]}

    triad = ceilings["stream_triad_GBps"]
    read_ceiling, write_ceiling = ceilings["stream_read_GBps"], ceilings["stream_write_GBps"]
    sgemm = ceilings["sgemm_GFLOPs"]
    # On a GPU the compute ceiling is cuBLAS's fp32 SGEMM there, and the bandwidth targets are set against the
    # driver's device-to-device copy.
    on_device = "device_sgemm_GFLOPs" in ceilings
    gemm_ceiling = ceilings["device_sgemm_GFLOPs"] if on_device else ceilings["sgemm_native_GFLOPs"]
    device_copy = ceilings.get("device_copy_GBps")
    rows = []
    for name, c in cases.items():
        t = torch_by_name.get(name)
        row = {"name": name, "camex_s": c["camex_s"], "camex_median_s": c["camex_median_s"],
               "torch_s": t["seconds"] if t else None, "torch_median_s": t["median_seconds"] if t else None,
               "torch_out_s": t["out_seconds"] if t else None, "bytes": c["bytes"], "bytes_read": c["bytes_read"],
               "bytes_written": c["bytes_written"], "flops": c["flops"]}
        if "breakdown_ms" in c:
            row["breakdown_ms"] = c["breakdown_ms"]
        row["camex_GBps"] = c["bytes"] / c["camex_s"] * 1e-9
        row["camex_GFLOPs"] = c["flops"] / c["camex_s"] * 1e-9
        row["fraction_of_triad"] = row["camex_GBps"] / triad
        row["fraction_of_device_copy"] = row["camex_GBps"] / device_copy if device_copy else None
        # The roofline of this run (Williams, Waterman, Patterson 2009): the case's reads at the read ceiling, then its
        # writes at the write ceiling, unless its flops at the native SGEMM rate take longer; then the case is
        # compute-bound on this machine, and no kernel could reach the memory figure.
        memory_s = (c["bytes_read"] / read_ceiling + c["bytes_written"] / write_ceiling) * 1e-9
        compute_s = c["flops"] / gemm_ceiling * 1e-9
        row["roofline_s"] = max(memory_s, compute_s)
        row["roofline_bound"] = "compute" if compute_s > memory_s else "memory"
        row["fraction_of_roofline"] = row["roofline_s"] / c["camex_s"]
        row["fraction_of_sgemm"] = row["camex_GFLOPs"] / gemm_ceiling
        row["speedup_vs_torch"] = row["torch_s"] / c["camex_s"] if t else None
        row["speedup_vs_torch_out"] = row["torch_out_s"] / c["camex_s"] if row["torch_out_s"] else None
        rows.append(row)

    print(f"ceilings: STREAM copy {ceilings['stream_copy_GBps']:.1f} GB/s, triad {triad:.1f} GB/s, "
          f"read {read_ceiling:.1f} GB/s, streaming write {write_ceiling:.1f} GB/s, "
          + (f"device copy {device_copy:.1f} GB/s, SGEMM {gemm_ceiling:.1f} GFLOP/s (cuBLAS fp32; TF32 "
             f"{ceilings['device_sgemm_tf32_GFLOPs']:.1f}) " if on_device else
             f"SGEMM {gemm_ceiling:.1f} GFLOP/s (Eigen, native; the system BLAS PyTorch calls: {sgemm:.1f}) ")
          + f"({ceilings['execution_space']}, concurrency {ceilings['concurrency']})")
    print(f"torch {torch['torch_version']} on {torch.get('device_name', 'cpu')}, {torch['threads']} threads, BLAS loaded: "
          f"{', '.join(torch['blas_loaded']) or 'none found'}")
    print(f"  {torch['blas_config'][:160]}")
    header = f"{'case':<52} {'camex ms':>9} {'GB/s':>7} {'%copy' if on_device else '%triad':>7} {'%roof':>6} {'GFLOP/s':>8} {'%sgemm':>7} {'torch ms':>9} {'x torch':>8} {'torch out= ms':>13} {'x out=':>7}"
    print(header)
    print("-" * len(header))
    fmt = lambda v, spec: format(v, spec) if v is not None else format("-", spec.split(".")[0])
    for r in rows:
        bandwidth_share = r["fraction_of_device_copy"] if on_device else r["fraction_of_triad"]
        print(f"{r['name']:<52} {r['camex_s'] * 1e3:>9.3f} {r['camex_GBps']:>7.1f} {100 * bandwidth_share:>6.0f}% "
              f"{100 * r['fraction_of_roofline']:>5.0f}%{'c' if r['roofline_bound'] == 'compute' else ' '}"
              f"{r['camex_GFLOPs']:>8.1f} {100 * r['fraction_of_sgemm']:>6.0f}% {fmt(r['torch_s'] and r['torch_s'] * 1e3, '>9.3f')} "
              f"{fmt(r['speedup_vs_torch'], '>7.2f')}x {fmt(r['torch_out_s'] and r['torch_out_s'] * 1e3, '>13.3f')} "
              f"{fmt(r['speedup_vs_torch_out'], '>6.2f')}x")

    for r in rows:
        if "breakdown_ms" in r:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["breakdown_ms"].items(), key=lambda kv: -kv[1]))
            print(f"{r['name']}: median step {r['camex_median_s'] * 1e3:.1f} ms = {parts} (ms)")

    report = {"ceilings": {k: ceilings[k] for k in ("stream_triad_GBps", "stream_copy_GBps", "stream_write_GBps", "stream_read_GBps",
                                                    "device_copy_GBps", "sgemm_GFLOPs", "sgemm_native_GFLOPs",
                                                    "device_sgemm_GFLOPs", "device_sgemm_tf32_GFLOPs") if k in ceilings},
              "machine": {"execution_space": ceilings["execution_space"], "concurrency": ceilings["concurrency"],
                          "cpu": context.get("host_name"), "num_cpus": context.get("num_cpus"),
                          "mhz_per_cpu": context.get("mhz_per_cpu"), "caches": context.get("caches")},
              "torch": {k: torch.get(k) for k in ("torch_version", "threads", "device_name", "blas_config", "blas_loaded")},
              "cases": rows}
    write_atomically(args.json, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
