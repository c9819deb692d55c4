"""What the trainers' results.py share: every policy's validation curve, averaged over its seeds, written as a CSV
and drawn by gnuplot as a PNG beside it."""
import csv
import os
import statistics
import subprocess


def draw(policies, results, png, column, title, ylabel, key="top right"):
    """`results`: dicts with "policy" and "args" (whose --out holds curves.csv); `column` the curves.csv column."""
    curves = {}
    for policy in policies:
        per_step = {}
        for r in (r for r in results if r["policy"] == policy):
            with open(os.path.join(r["args"][r["args"].index("--out") + 1], "curves.csv")) as f:
                for row in csv.DictReader(f):
                    if row[column]:
                        per_step.setdefault(int(row["step"]), []).append(float(row[column]))
        curves[policy] = {s: statistics.mean(v) for s, v in sorted(per_step.items())}
    steps = sorted({s for c in curves.values() for s in c})
    table = os.path.splitext(png)[0] + ".csv"
    with open(table + ".tmp", "w") as f:
        f.write("step," + ",".join(policies) + "\n")
        for s in steps:
            f.write(f"{s}," + ",".join(f"{curves[p][s]:.6f}" if s in curves[p] else "" for p in policies) + "\n")
    os.replace(table + ".tmp", table)
    script = "\n".join([
        "set terminal pngcairo size 960,600 noenhanced", f"set output '{png}.tmp'", "set datafile separator ','",
        f"set title '{title}'", "set xlabel 'step'", f"set ylabel '{ylabel}'", "set grid", f"set key {key}",
        "plot " + ", ".join(f"'{table}' using 1:{i + 2} with linespoints lw 2 title '{p}'" for i, p in enumerate(policies))])
    if subprocess.run(["gnuplot"], input=script, text=True).returncode == 0:
        os.replace(png + ".tmp", png)
        print(f"\ncurves: {table} and {png}")
    else:
        print(f"\ngnuplot failed; the curves are in {table}")
