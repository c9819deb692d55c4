#!/usr/bin/python3
"""The language model trainer's resident memory over a long run: it should stay flat once the first steps have
allocated everything (the model, the optimiser state, the activations, the kernels' workspaces) and the first
validation pass and checkpoint have run. Samples /proc/PID/status (VmRSS, and its anonymous and file-backed parts)
every --interval seconds while the trainer runs --steps steps of the README's demo model (or the options after
--), with a validation pass every tenth of the run and a checkpoint every fifth, and the step each sample falls in
from the trainer's progress lines.

Writes memory.csv (seconds, step, rss_mib, anon_mib, file_mib) and memory.png (gnuplot) under --out, and prints
the resident set after --settle steps, its highest value after that, and the growth between the two. Exits 1 when
the growth exceeds --max-growth-mib.

usage: memory.py TRAINER [--steps 5000] [--settle STEP] [--interval 0.5] [--max-growth-mib 8] [--out runs/memory]
                 [-- trainer options]"""
import argparse
import os
import re
import subprocess
import sys
import threading
import time

STEP = re.compile(r"^step +(\d+)/")


def status_mib(pid):
    """VmRSS, RssAnon and RssFile of a live process, in MiB (None once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except (FileNotFoundError, ProcessLookupError):
        return None
    kib = lambda key: int(fields[key].split()[0]) if key in fields else 0
    return kib("VmRSS") / 1024, kib("RssAnon") / 1024, kib("RssFile") / 1024


def plot(csv, png, title):
    script = ("set terminal pngcairo size 1200,600\nset output '" + png + ".tmp'\nset termoption noenhanced\n"
              "set datafile separator ','\nset key top left\nset xlabel 'training step'\nset ylabel 'MiB'\n"
              "set yrange [0:*]\nset title '" + title + "'\n"
              "plot '" + csv + "' using 2:3 skip 1 with lines lw 2 title 'resident (VmRSS)', "
              "'' using 2:4 skip 1 with lines title 'anonymous (RssAnon)', "
              "'' using 2:5 skip 1 with lines title 'file-backed (RssFile)'\n")
    done = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    if done.returncode != 0:
        print(f"note: gnuplot could not draw {png}: {done.stderr.strip()}", file=sys.stderr)
        return
    os.replace(png + ".tmp", png)


def main(argv):
    extra = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trainer")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--settle", type=int, default=None,
                   help="steps after which the resident set must stay flat (default: 100 after the first checkpoint, "
                        "whose host copies of the tensors are the last thing a run allocates for the first time)")
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--max-growth-mib", type=float, default=8.0)
    p.add_argument("--out", default="runs/memory")
    a = p.parse_args(argv)
    if a.settle is None:
        a.settle = max(1, a.steps // 5) + 100
    if a.steps <= a.settle:
        sys.exit(f"memory.py: --steps {a.steps} must exceed --settle {a.settle}")
    os.makedirs(a.out, exist_ok=True)
    defaults = {"--steps": str(a.steps), "--out": os.path.join(a.out, "run"), "--plot": "0", "--log-every": "20",
                "--eval-every": str(max(1, a.steps // 10)), "--checkpoint-every": str(max(1, a.steps // 5))}
    command = [a.trainer] + [w for k, v in defaults.items() if k not in extra for w in (k, v)] + extra
    print("running:", " ".join(command), flush=True)
    trainer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1)
    step = [0]
    tail = []

    def read_progress():
        for line in trainer.stdout:
            tail.append(line)
            del tail[:-20]
            found = STEP.match(line)
            if found:
                step[0] = int(found.group(1))
                if step[0] % max(20, a.steps // 10 // 20 * 20) == 0:
                    print(line, end="", flush=True)

    reader = threading.Thread(target=read_progress)
    reader.start()
    start = time.monotonic()
    rows = []
    while trainer.poll() is None:
        sample = status_mib(trainer.pid)
        if sample:
            rows.append((time.monotonic() - start, step[0]) + sample)
        time.sleep(a.interval)
    reader.join()
    if trainer.returncode != 0:
        sys.exit(f"memory.py: the trainer failed ({trainer.returncode}):\n{''.join(tail)}")

    csv = os.path.join(a.out, "memory.csv")
    with open(csv + ".tmp", "w") as f:
        f.write("seconds,step,rss_mib,anon_mib,file_mib\n")
        for r in rows:
            f.write("%.2f,%d,%.2f,%.2f,%.2f\n" % r)
    os.replace(csv + ".tmp", csv)
    settled = [r for r in rows if r[1] >= a.settle]
    if len(settled) < 2:
        sys.exit(f"memory.py: too few samples after step {a.settle} ({len(settled)}): lower --interval")
    first, highest, last = settled[0][2], max(r[2] for r in settled), settled[-1][2]
    growth = highest - first
    plot(csv, os.path.join(a.out, "memory.png"),
         f"smoe_lm resident memory over {a.steps} steps ({' '.join(extra) or 'the demo model'})")
    print(f"{len(rows)} samples over {rows[-1][0]:.0f} s; resident {first:.1f} MiB at step {settled[0][1]}, "
          f"at most {highest:.1f} MiB after it (growth {growth:+.2f} MiB), {last:.1f} MiB at the end; "
          f"peak anonymous {max(r[3] for r in rows):.1f} MiB")
    print(f"wrote {csv} and {os.path.join(a.out, 'memory.png')}")
    if growth > a.max_growth_mib:
        sys.exit(f"memory.py: the resident set grew by {growth:.2f} MiB after step {a.settle} "
                 f"(at most {a.max_growth_mib} MiB allowed)")


if __name__ == "__main__":
    main(sys.argv[1:])
