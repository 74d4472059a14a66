"""Ablation of the fast-CIFAR techniques: short training runs of the same network, seed and
budget, each changing one setting of today's defaults, plus the whole `--recipe fast` bundle.
Writes ablation.csv and ablation.md (the table, with the exact command of every run) into
--out, and each run's folder under --out/runs.

    python benchmarks/ablation.py --model v1 --width 0.5 --epochs 10 [--variants ema-0.999,cutout-8]
    python benchmarks/ablation.py --jobs 2 ...   # two runs at a time, one thread each
    python benchmarks/ablation.py --dry-run      # print the commands only

Every run is `python -m minimobile train ...` in its own process, so each row's command
reproduces it exactly (fixed seed, deterministic kernels). Only what the runs measured is
written: a failed run is a row saying so, never a number.

Test-time augmentation changes no training, so its rows train nothing: they evaluate the
baseline's final weights (`minimobile eval --tta ...`). Their delta is then TTA's alone, free
of the run-to-run noise of a second training.

The table is rewritten after every run, and a row already in --out's ablation.csv with status
"ok" and the same command is kept, not run again: an interrupted ablation resumes where it
stopped (--redo runs everything again).
"""

import argparse
import csv
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's minimobile, as in the runs (PYTHONPATH below)

# (name, what it changes against the baseline, its options). The baseline is today's defaults
# (SGD, Nesterov, label smoothing 0.1, cosine with 1 epoch of warm-up, no decay on batch norm
# and biases, random flips), so each row is one technique switched on, or one default off.
VARIANTS = [
    ("baseline", "today's defaults", []),
    ("label-smoothing-0", "no label smoothing (default 0.1)", ["--label-smoothing", "0"]),
    ("label-smoothing-0.2", "label smoothing 0.2 (airbench, Page)", ["--label-smoothing", "0.2"]),
    ("no-nesterov", "plain momentum instead of Nesterov", ["--no-nesterov"]),
    ("decay-norm-and-bias", "weight decay on batch norm and biases too",
     ["--decay-norm-and-bias"]),
    ("no-decay-depthwise", "no weight decay on the depthwise filters (MobileNet paper)",
     ["--no-decay-depthwise"]),
    ("linear-schedule", "linear decay to 0 instead of cosine", ["--schedule", "linear"]),
    ("ema-0.999", "EMA of the weights, decay 0.999, warmed up", ["--ema", "0.999"]),
    ("tta-flip", "test-time augmentation: flips (baseline's final weights)", ["--tta", "flip"]),
    ("tta-flip-translate", "test-time augmentation: flips and 1 px shifts (baseline's final "
     "weights)", ["--tta", "flip,translate"]),
    ("alternate-flips", "alternating flips (airbench)", ["--flip", "alternate"]),
    ("cutout-8", "cutout 8 x 8", ["--cutout", "8"]),
    ("crop-padding-2", "random crops from 2 px of padding instead of 4 (airbench's shifts)",
     ["--crop-padding", "2"]),
    ("batch-256", "batch 256, lr scaled linearly", ["--batch-size", "256"]),
    ("progressive-24", "progressive resizing: 24x24 until 60 % of the epochs are done, then "
     "32x32", ["--start-resolution", "24", "--resolution-ramp", "0.6,0.6"]),
    ("whiten-stem", "stem filters initialised to whiten 3x3 patches (airbench)",
     ["--whiten-stem"]),
    ("prune-0.5", "InfoBatch's data pruning: half the well-learned images dropped each epoch",
     ["--prune", "0.5"]),
    ("recipe-fast", "all of --recipe fast, at this budget", ["--recipe", "fast"]),
]
EVALUATED = {"tta-flip", "tta-flip-translate"}  # evaluations of the baseline, not trainings
FIELDS = ("variant", "change", "best_test_acc", "best_epoch", "final_test_acc", "delta_final",
          "final_train_loss", "wall_seconds", "status", "command")


def budget_args(args):
    """The options every run shares: the network, the budget, the seed and the data. Given
    explicitly, they also override what --recipe fast would set."""
    argv = ["--model", args.model, "--width", str(args.width), "--epochs", str(args.epochs),
            "--seed", str(args.seed), "--eval-every", "1", "--no-progress", "--overwrite"]
    for option, value in (("--limit-train", args.limit_train), ("--limit-test", args.limit_test),
                          ("--data", args.data)):
        if value is not None:
            argv += [option, str(value)]
    return argv


def command(args, name, options):
    """The full argv of one run; the variant's own options come last, so they win."""
    out = Path(args.out) / "runs" / name
    if name in EVALUATED:
        argv = [sys.executable, "-m", "minimobile", "eval",
                str(Path(args.out) / "runs" / "baseline" / "last.npz"), "--out", str(out)]
        for option, value in (("--limit-test", args.limit_test), ("--data", args.data)):
            if value is not None:
                argv += [option, str(value)]
        return argv + options
    base = budget_args(args)
    if args.batch_size is not None and "--batch-size" not in options:
        base += ["--batch-size", str(args.batch_size)]
    return [sys.executable, "-m", "minimobile", "train", *base, "--out", str(out), *options]


def threads_env(args):
    """The environment variables that set each run's threads: with --jobs N, the cores are
    shared out (Numba's threads change how some sums are split, so they belong to the command
    that reproduces a row)."""
    if args.jobs == 1:
        return {}
    return {"NUMBA_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.jobs))}


def shown(argv, env=None):
    """A command as a person would type it: `NUMBA_NUM_THREADS=1 python -m minimobile ...`."""
    prefix = [f"{k}={v}" for k, v in (env or {}).items()]
    return " ".join(prefix + [shlex.join(["python", *argv[1:]])])


def start(argv, env, log):
    """Start one run in its own process, output to `log`."""
    full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    f = open(log, "w")
    proc = subprocess.Popen(argv, cwd=REPO, env=full_env, stdout=f, stderr=subprocess.STDOUT)
    return proc, f, time.perf_counter()


def summarise_training(row, out):
    """Fill a training's row from its own history.csv."""
    from minimobile.train import read_history
    rows = read_history(out / "history.csv")
    tested = [r for r in rows if r["test_acc"] is not None]
    best = max(tested, key=lambda r: r["test_acc"])
    row.update(best_test_acc=f"{best['test_acc']:.4f}", best_epoch=best["epoch"],
               final_epoch=rows[-1]["epoch"], final_test_acc=f"{tested[-1]['test_acc']:.4f}",
               final_train_loss=f"{rows[-1]['train_loss']:.4f}")


def summarise_evaluation(row, log, baseline):
    """Fill an evaluation's row from the accuracy `minimobile eval` printed; the training
    figures are the baseline's, whose final weights it evaluated (once: best is final)."""
    lines = [line for line in Path(log).read_text().splitlines()
             if line.startswith("test accuracy ")]
    if not lines:
        raise ValueError(f"{log} has no 'test accuracy' line")
    accuracy = float(lines[-1].split()[2].rstrip(","))
    row.update(best_test_acc=f"{accuracy:.4f}", final_test_acc=f"{accuracy:.4f}",
               best_epoch=baseline["final_epoch"], final_train_loss=baseline["final_train_loss"])


def summarise(name, change, shown_command, code, seconds, out, log, baseline=None):
    """One row of the table, from the run's own output."""
    row = {"variant": name, "change": change,
           "wall_seconds": "" if seconds is None else f"{seconds:.0f}",
           "command": shown_command, "status": "ok" if code == 0 else f"failed (exit {code})"}
    if code == 0:
        try:
            if name in EVALUATED:
                summarise_evaluation(row, log, baseline)
            else:
                summarise_training(row, out)
        except (OSError, ValueError, KeyError, TypeError) as e:
            row["status"] = f"failed ({e})"
    return row


def write_tables(rows, out, args):
    """ablation.csv and ablation.md in `out` (atomically); delta_final is against the
    baseline's row."""
    base = next((r for r in rows if r["variant"] == "baseline" and r.get("final_test_acc")),
                None)
    for r in rows:
        if base is not None and r.get("final_test_acc"):
            r["delta_final"] = f"{float(r['final_test_acc']) - float(base['final_test_acc']):+.4f}"
    tmp = out / "ablation.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "ablation.csv")
    columns = FIELDS[:-1]
    how = (f"{args.jobs} runs at a time, each on NUMBA_NUM_THREADS="
           f"{threads_env(args)['NUMBA_NUM_THREADS']}" if args.jobs > 1 else "one run at a time")
    lines = [f"# Ablation: {args.model} width {args.width:g}, {args.epochs} epochs, seed "
             f"{args.seed}", "",
             f"Written by `{shown([sys.executable, *sys.argv])}` on {platform.node()} "
             f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs), "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {how}. delta_final: final "
             "test accuracy minus the baseline's. The accuracies with --ema are the averaged "
             "model's; with --tta, augmented ones (the baseline's final weights, evaluated "
             "once). wall_seconds is each run's own, taken beside the other runs.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    lines += ["", "## Commands", ""]
    lines += [f"- {r['variant']}: `{r['command']}`" for r in rows]
    tmp = out / "ablation.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / "ablation.md")


def finished_rows(out):
    """The rows of an earlier ablation.csv in `out` that ran to the end, by variant."""
    path = out / "ablation.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {r["variant"]: r for r in csv.DictReader(f) if r.get("status") == "ok"}


def finished_training(argv, folder):
    """True when `folder` holds a finished run of exactly the configuration that the
    `minimobile train` command `argv` asks for (the settings and epoch in its last.npz), so a
    run whose row was lost with this script's own process (a crash, a kill) is not trained
    again."""
    import dataclasses

    from minimobile import checkpoint, cli
    from minimobile.train import LAST, TrainConfig, read_config
    last = folder / LAST
    if not last.is_file():
        return False
    try:
        asked = TrainConfig(**cli.given_train_settings(cli.build_parser().parse_args(argv[3:])))
        saved = read_config(last)
        done = checkpoint.load_meta(last).get("epoch")
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return done == asked.epochs and dataclasses.replace(saved, out=asked.out) == asked


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="v1")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="for every run but batch-256 (default: the trainer's, 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--data", default=None, help="CIFAR-10 (default: as the trainer)")
    parser.add_argument("--out", default=str(REPO / "results" / "ablation"))
    parser.add_argument("--variants", default=",".join(name for name, _, _ in VARIANTS),
                        help="comma-separated names (default: all)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time, the cores shared out between them (default 1)")
    parser.add_argument("--redo", action="store_true",
                        help="run every variant again, even those --out already has")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs: expected a positive number of runs at a time, got {args.jobs}")
    known = {name: (change, options) for name, change, options in VARIANTS}
    chosen = args.variants.split(",")
    unknown = [name for name in chosen if name not in known]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(known)}")
    if any(name in EVALUATED for name in chosen) and "baseline" not in chosen:
        parser.error(f"{sorted(EVALUATED & set(chosen))} evaluate the baseline's weights: "
                     "choose baseline too")
    env = threads_env(args)
    commands = {name: command(args, name, known[name][1]) for name in chosen}
    if args.dry_run:
        for name in chosen:
            print(shown(commands[name], env))
        return 0
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    earlier = {} if args.redo else finished_rows(out)
    rows = {}
    for name in chosen:
        folder = out / "runs" / name
        if name in EVALUATED:
            continue  # kept below if the baseline they evaluate is
        if name in earlier and earlier[name]["command"] == shown(commands[name], env):
            rows[name] = earlier[name]
            print(f"{name}: kept from {out / 'ablation.csv'}", flush=True)
        elif not args.redo and finished_training(commands[name], folder):
            rows[name] = summarise(name, known[name][0], shown(commands[name], env), 0, None,
                                   folder, out / "runs" / f"{name}.log")
            print(f"{name}: found finished in {folder} (wall time not known)", flush=True)
    if "baseline" in rows:  # the evaluations need its last epoch, which the table lacks
        try:
            summarise_training(rows["baseline"], out / "runs" / "baseline")
        except (OSError, ValueError):  # its folder is gone: run it, and what evaluates it, again
            del rows["baseline"]
    for name in chosen:
        if name in EVALUATED and "baseline" in rows and name in earlier \
                and earlier[name]["command"] == shown(commands[name], env):
            rows[name] = earlier[name]
            print(f"{name}: kept from {out / 'ablation.csv'}", flush=True)
    # Rows of an earlier invocation for variants not chosen now stay in the table if they
    # ran the command this one would: the table can be filled a few variants at a time.
    same_budget = {name: row for name, row in earlier.items() if name not in chosen
                   and row["command"] == shown(command(args, name, known[name][1]), env)}
    order = [name for name, _, _ in VARIANTS]

    def table():
        every = {**same_budget, **rows}
        return [every[name] for name in order if name in every]

    waiting = [name for name in chosen if name not in rows]
    running = {}
    while waiting or running:
        if rows.get("baseline", {}).get("status", "ok") != "ok":  # nothing to evaluate
            for name in [n for n in waiting if n in EVALUATED]:
                waiting.remove(name)
                rows[name] = {"variant": name, "change": known[name][0], "status":
                              "failed (the baseline failed)",
                              "command": shown(commands[name], env)}
        ready = [name for name in waiting if name not in EVALUATED or "baseline" in rows]
        for name in ready[:args.jobs - len(running)]:
            waiting.remove(name)
            print(f"{name}: {shown(commands[name], env)}", flush=True)
            running[name] = start(commands[name], env, out / "runs" / f"{name}.log")
        time.sleep(0.2)
        for name, (proc, log, started) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            seconds = time.perf_counter() - started
            rows[name] = summarise(name, known[name][0], shown(commands[name], env),
                                   proc.returncode, seconds, out / "runs" / name,
                                   out / "runs" / f"{name}.log", rows.get("baseline"))
            print(f"  {name}: {rows[name]['status']}, best {rows[name].get('best_test_acc', '-')}"
                  f", {seconds:.0f} s", flush=True)
            # after every run, in the variants' order, so an interrupted ablation keeps its rows
            write_tables(table(), out, args)
    write_tables(table(), out, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
