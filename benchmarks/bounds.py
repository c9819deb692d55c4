"""The least time exact TIES and counter-drawn DARE steps can take on the machine of one benchmarks/run report, beside
the roofline the report gives every case (its operands read once at the read ceiling, its output written once at
the write ceiling, or its flops at the native SGEMM rate): benchmarks/bounds.py REPORT.json

TIES: the trim keeps each expert's k largest magnitudes, so no merged entry is known before every entry of every
delta has been seen; where the operands are larger than the caches below memory (every core's L2 and the L3), the
merge must read again at least what they could not hold. Bound: (2 read - caches) at the read ceiling, plus the
writes.

DARE: each (expert, entry) site draws 32 bits of Philox4x32-10 from the counter-based generator; the report's
dare_draws case times one step's draws at the layer shape with no operand read. Bound: the larger of the roofline
and the draws (rigorous); the draws plus the merge's flops at the SGEMM rate is printed beside it, the bound if
the two cannot overlap on the cores' vector units (not proven here)."""
import json
import re
import sys


def cache_bytes(report):
    caches = report["machine"].get("caches") or []
    total = 0
    for c in caches:
        if c["level"] >= 2 and c["type"] in ("Unified", "Data"):
            instances = max(1, report["machine"]["num_cpus"] // max(1, c["num_sharing"]))
            total += c["size"] * instances
    if total == 0:
        sys.exit("the report names no L2 or L3 caches (run benchmarks/run again to record them)")
    return total


def sites_of(name):
    """n * rows * cols of a case named .../ROWSxCOLS/n=N/..."""
    m = re.search(r"/(\d+)x(\d+)/n=(\d+)/", name + "/")
    return int(m[1]) * int(m[2]) * int(m[3]) if m else None


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        report = json.load(f)
    ceilings = report["ceilings"]
    read, write = ceilings["stream_read_GBps"] * 1e9, ceilings["stream_write_GBps"] * 1e9
    sgemm = ceilings["sgemm_native_GFLOPs"] * 1e9
    caches = cache_bytes(report)
    cases = {c["name"]: c for c in report["cases"]}
    draws = next((c for name, c in cases.items() if name.startswith("dare_draws/")), None)
    seconds_per_draw = draws["camex_s"] / sites_of(draws["name"]) if draws else None

    print(f"read {read * 1e-9:.1f} GB/s, write {write * 1e-9:.1f} GB/s, native SGEMM {sgemm * 1e-9:.1f} GFLOP/s, "
          f"L2 + L3 {caches / 2**20:.0f} MiB" +
          (f", draws {seconds_per_draw * 1e9 * report['machine']['concurrency']:.2f} ns per draw per thread" if draws else ""))
    print()
    print("| case | camex ms | roofline ms | bound ms | roofline / bound | bound / camex | draws + flops ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, c in cases.items():
        roofline = c["roofline_s"]
        additive = None
        if name.startswith("ties/"):
            again = max(0.0, c["bytes_read"] - caches)
            bound = (c["bytes_read"] + again) / read + c["bytes_written"] / write
        elif name.startswith("dare/") and seconds_per_draw and sites_of(name):
            draws_s = seconds_per_draw * sites_of(name)
            bound = max(roofline, draws_s)
            additive = draws_s + c["flops"] / sgemm
        else:
            continue
        print(f"| {name} | {c['camex_s'] * 1e3:.2f} | {roofline * 1e3:.2f} | {bound * 1e3:.2f} | "
              f"{100 * roofline / bound:.0f} % | {100 * bound / c['camex_s']:.0f} % | "
              + (f"{additive * 1e3:.2f} |" if additive else "– |"))


if __name__ == "__main__":
    main()
