#!/usr/bin/python3
"""The language model trainer's speed while another process wants a core. Losing one of two cores to another
process should cost at most 2x. Linux groups processes by session for scheduling (autogroups): a process started
in another session (another terminal, a service) gets an equal share of the CPU whatever its nice value, and a
process in the trainer's session at nice 19 gets next to nothing. So each load runs in a session of its own unless
it says otherwise: a busy loop, a compiler (a camex test compiled in a loop) at nice 19, and a busy loop in the
trainer's session at nice 19. The trainer runs as camex's scripts run it (a thread per core, bound) with its
default --host-threads auto (camex::AdaptiveThreads: one thread fewer while that is faster), and for comparison
on all its threads always (--host-threads all: what it did before), with libgomp's spin at barriers cut from 300000
to 10000 iterations, with OpenMP's passive waiting, and on one thread.

Run through benchmarks/under-load, which sets up and builds first. Each configuration trains --steps steps of the
README's demo model (TIES-CA) and keeps the trainer's own summary rate (training tokens over training seconds);
the best of --rounds rounds. Writes under_load.csv (and .png, with gnuplot) under --out.

Then the cause, apart from the trainer (camex_kernel_joins): back-to-back host kernels of 15000 and of 3000000
iterations (about 0.15 and 15 ms each here), split equally among the threads (static) or handed out as threads
come free (dynamic), alone and beside the busy loop of another session (about 0.08 and 14 ms a kernel alone on
this machine); the best of --rounds rounds of each.
Writes kernel_joins.csv (and .png): each kernel's time and its slowdown under the load.

usage: under_load.py BUILD_DIR [--steps 100] [--rounds 2] [--part all|trainer|joins] [--out runs/under-load]"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

BUSY = ["sh", "-c", "while :; do :; done"]


def compile_command(build):
    """The compiler's command for one camex test object, writing to a scratch file: a real compile as the load."""
    commands = subprocess.run(["ninja", "-C", build, "-t", "commands", "test_kernels_row_combination_Serial"],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    line = next(c for c in commands if "row_combination.cpp.o" in c and " -c " in c)
    words = shlex.split(line)
    for flag in ("-MD", "-MT", "-MF", "-o"):
        while flag in words:
            at = words.index(flag)
            del words[at:at + (1 if flag == "-MD" else 2)]
    return words + ["-o", os.path.join(tempfile.gettempdir(), "camex-under-load.o")]


def looped(command):
    return ["sh", "-c", "while :; do " + " ".join(shlex.quote(w) for w in command) + " >/dev/null 2>&1; done"]


def rate(trainer, steps, out, env, threads):
    done = subprocess.run([trainer, "--policy", "ties-ca", "--steps", str(steps), "--out", out, "--plot", "0",
                           "--host-threads", threads],
                          capture_output=True, text=True, env=env)
    found = re.search(r"training ([0-9.]+) tokens/s", done.stdout)
    if done.returncode != 0 or not found:
        sys.exit(f"under_load.py: the trainer failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return float(found.group(1))


def plot(csv, png, title, ylabel, column):
    """Bars of one column of the CSV, labelled by its first, with gnuplot (a note instead where it is missing or
    fails)."""
    script = ("set terminal pngcairo size 1200,700\nset output '" + png + ".tmp'\nset termoption noenhanced\n"
              "set datafile separator ','\nset style data histogram\nset style fill solid\nset boxwidth 0.7\n"
              "set yrange [0:*]\nset ylabel '" + ylabel + "'\nset xtics rotate by -35\nset bmargin 16\n"
              "set rmargin 30\nset title '" + title + "'\nset key off\n"
              "plot '" + csv + "' using " + str(column) + ":xtic(1) skip 1\n")
    if subprocess.run(["gnuplot"], input=script, text=True, capture_output=True).returncode == 0:
        os.replace(png + ".tmp", png)
        print(f"{csv} and {png}")
    else:
        print(f"{csv} (gnuplot failed or is missing: no PNG)")


def beside_busy_loop(command, busy):
    """command's standard output, run alone or beside the busy loop of another session."""
    competitor = subprocess.Popen(BUSY, preexec_fn=os.setsid) if busy else None
    try:
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout
    finally:
        if competitor:
            os.killpg(competitor.pid, 9)
            competitor.wait()


def kernel_joins(build, rounds, out):
    program = os.path.join(build, "benchmarks", "camex_kernel_joins")
    rows = []
    for items, kernels in ((15000, 2000), (3000000, 20)):
        for schedule in ("static", "dynamic"):
            alone = None
            for busy in (False, True):
                best = min(json.loads(beside_busy_loop([program, str(items), str(kernels), schedule], busy))["us_per_kernel"]
                           for _ in range(rounds))
                alone = alone or best
                name = f"{items} iterations, {schedule}, " + ("busy loop, another session" if busy else "alone")
                rows.append((name, best, best / alone))
                print(f"{name:55s} {best:10.1f} us per kernel  ({best / alone:.2f}x)", flush=True)
    csv = os.path.join(out, "kernel_joins.csv")
    with open(csv + ".tmp", "w") as f:
        f.write("case,us_per_kernel,slowdown\n")
        for name, us, slowdown in rows:
            f.write(f"\"{name}\",{us:.3f},{slowdown:.3f}\n")
    os.replace(csv + ".tmp", csv)
    plot(csv, os.path.join(out, "kernel_joins.png"), "back-to-back host kernels on 2 cores: slowdown beside another "
         "process", "time per kernel / alone", 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--part", choices=("all", "trainer", "joins"), default="all")
    parser.add_argument("--out", default="runs/under-load")
    a = parser.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.part != "joins":
        trainer_under_load(a)
    if a.part != "trainer":
        kernel_joins(a.build, a.rounds, a.out)


def trainer_under_load(a):
    trainer = os.path.join(a.build, "examples", "smoe_lm", "smoe_lm")
    compiler = compile_command(a.build)
    env = dict(os.environ)
    short_spin = dict(env, GOMP_SPINCOUNT="10000")
    passive = dict(env, OMP_WAIT_POLICY="passive")
    one_thread = dict(env, OMP_NUM_THREADS="1")
    other, compiling = "busy loop, another session", "compiler, another session, nice 19"
    # (name, load, nice, a session of its own, environment, --host-threads)
    cases = [("alone", None, 0, False, env, "auto"), ("alone, all threads", None, 0, False, env, "all"),
             ("alone, 1 thread", None, 0, False, one_thread, "all"),
             (other, BUSY, 0, True, env, "auto"), (other + ", all threads", BUSY, 0, True, env, "all"),
             (other + ", all threads, GOMP_SPINCOUNT=10000", BUSY, 0, True, short_spin, "all"),
             (other + ", all threads, passive wait", BUSY, 0, True, passive, "all"),
             (other + ", 1 thread", BUSY, 0, True, one_thread, "all"),
             (compiling, looped(compiler), 19, True, env, "auto"),
             (compiling + ", all threads", looped(compiler), 19, True, env, "all"),
             ("busy loop, same session, nice 19", BUSY, 19, False, env, "auto")]
    os.makedirs(a.out, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, load, niceness, session, case_env, threads in cases:
            best = 0.0
            for _ in range(a.rounds):
                competitor = None
                if load:
                    competitor = subprocess.Popen(load, preexec_fn=lambda n=niceness, own=session: (
                        os.setsid() if own else os.setpgid(0, 0), os.nice(n)))
                try:
                    best = max(best, rate(trainer, a.steps, os.path.join(tmp, "run"), case_env, threads))
                finally:
                    if competitor:
                        os.killpg(competitor.pid, 9)
                        competitor.wait()
            rows.append((name, best))
            print(f"{name:45s} {best:8.0f} tokens/s  ({rows[0][1] / best:.2f}x slower than alone)", flush=True)
    csv = os.path.join(a.out, "under_load.csv")
    with open(csv + ".tmp", "w") as f:
        f.write("load,tokens_per_second,slowdown\n")
        for name, r in rows:
            f.write(f"\"{name}\",{r:.1f},{rows[0][1] / r:.3f}\n")
    os.replace(csv + ".tmp", csv)
    plot(csv, os.path.join(a.out, "under_load.png"), "smoe_lm (the demo model, TIES-CA) on 2 cores beside another "
         "process", "tokens/s", 2)

if __name__ == "__main__":
    main()
