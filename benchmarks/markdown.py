"""Prints the JSON report of one benchmarks/run as the Markdown table docs/performance.md shows, so recorded figures
are never typed by hand:  python3 benchmarks/markdown.py docs/measurements/<run>.json [--filter REGEX]"""
import argparse
import json
import re
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report")
    parser.add_argument("--filter", default="", help="regular expression; only matching case names are printed")
    args = parser.parse_args()
    with open(args.report) as f:
        report = json.load(f)
    c = report["ceilings"]
    write = f", streaming write {c['stream_write_GBps']:.1f} GB/s" if "stream_write_GBps" in c else ""
    read = f", read {c['stream_read_GBps']:.1f} GB/s" if "stream_read_GBps" in c else ""
    roofline = "fraction_of_roofline" in report["cases"][0] if report["cases"] else False
    print(f"Ceilings in this run: STREAM triad {c['stream_triad_GBps']:.1f} GB/s, copy {c['stream_copy_GBps']:.1f} GB/s{read}{write}; "
          f"SGEMM {c['sgemm_native_GFLOPs']:.1f} GFLOP/s (Eigen, native), {c['sgemm_GFLOPs']:.1f} GFLOP/s (system BLAS).")
    print()
    # % roofline: the time the case's reads take at the read ceiling plus its writes at the write ceiling (or, marked
    # "(compute)", its flops at the native SGEMM rate where that is longer), over its time. Reports written before
    # the read ceiling was measured have no such column, and those before the compute roof no mark.
    print("| case | camex ms | GB/s | % triad |" + (" % roofline |" if roofline else "") + " GFLOP/s | % SGEMM | torch ms | × torch |")
    print("|---|---:|---:|---:|" + ("---:|" if roofline else "") + "---:|---:|---:|---:|")
    pattern = re.compile(args.filter)
    for r in report["cases"]:
        if not pattern.search(r["name"]):
            continue
        torch_ms = f"{r['torch_s'] * 1e3:.1f}" if r["torch_s"] else "–"
        speedup = f"{r['speedup_vs_torch']:.1f}" if r["speedup_vs_torch"] else "–"
        bound = " (compute)" if r.get("roofline_bound") == "compute" else ""
        roof = f"{100 * r['fraction_of_roofline']:.0f}{bound} | " if roofline else ""
        print(f"| {r['name']} | {r['camex_s'] * 1e3:.2f} | {r['camex_GBps']:.1f} | {100 * r['fraction_of_triad']:.0f} | {roof}"
              f"{r['camex_GFLOPs']:.1f} | {100 * r['fraction_of_sgemm']:.0f} | {torch_ms} | {speedup} |")
    broken_down = [r for r in report["cases"] if pattern.search(r["name"]) and r.get("breakdown_ms")]
    if broken_down:
        print()
        print("Where the time of the median repetition went (ms, and share of the step):")
        print()
        print("| case | step ms | part | ms | share |")
        print("|---|---:|---|---:|---:|")
        for r in broken_down:
            step_ms = r["camex_median_s"] * 1e3
            for part, ms in sorted(r["breakdown_ms"].items(), key=lambda kv: -kv[1]):
                if ms == 0:  # a category this case has none of (no curvature in a Domain merge)
                    continue
                print(f"| {r['name']} | {step_ms:.1f} | {part} | {ms:.1f} | {100 * ms / step_ms:.0f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
