"""Ablation of the fast-CIFAR techniques: short training runs of the same network, seed and
budget, each changing one setting of today's defaults, plus the whole `--recipe fast` bundle.
Writes ablation.csv and ablation.md (the table, with the exact command of every run) into
--out, and each run's folder under --out/runs.

    python benchmarks/ablation.py --model v1 --width 0.5 --epochs 10 [--variants ema,cutout-8]
    python benchmarks/ablation.py --dry-run     # print the commands only

Every run is `python -m minimobile train ...` in its own process, so each row's command
reproduces it exactly (fixed seed, deterministic kernels). Only what the runs measured is
written: a failed run is a row saying so, never a number.
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
    ("linear-schedule", "linear decay to 0 instead of cosine", ["--schedule", "linear"]),
    ("ema-0.999", "EMA of the weights, decay 0.999, warmed up", ["--ema", "0.999"]),
    ("tta-flip", "test-time augmentation: flips", ["--tta", "flip"]),
    ("tta-flip-translate", "test-time augmentation: flips and 1 px shifts",
     ["--tta", "flip,translate"]),
    ("alternate-flips", "alternating flips (airbench)", ["--flip", "alternate"]),
    ("cutout-8", "cutout 8 x 8", ["--cutout", "8"]),
    ("batch-256", "batch 256, lr scaled linearly", ["--batch-size", "256"]),
    ("recipe-fast", "all of --recipe fast, at this budget", ["--recipe", "fast"]),
]
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
    base = budget_args(args)
    if args.batch_size is not None and "--batch-size" not in options:
        base += ["--batch-size", str(args.batch_size)]
    return [sys.executable, "-m", "minimobile", "train", *base, "--out", str(out), *options]


def shown(argv):
    """A command as a person would type it: `python -m minimobile ...`."""
    return shlex.join(["python", *argv[1:]])


def run(argv, log):
    """Run one training; returns (exit code, wall seconds). Output goes to `log`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    return code, time.perf_counter() - start


def summarise(name, change, argv, code, seconds, out):
    """One row of the table, from the run's own history.csv."""
    from minimobile.train import read_history
    row = {"variant": name, "change": change, "wall_seconds": f"{seconds:.0f}",
           "command": shown(argv), "status": "ok" if code == 0 else f"failed (exit {code})"}
    history = out / "history.csv"
    if code == 0 and history.is_file():
        rows = read_history(history)
        tested = [r for r in rows if r["test_acc"] is not None]
        best = max(tested, key=lambda r: r["test_acc"])
        row.update(best_test_acc=f"{best['test_acc']:.4f}", best_epoch=best["epoch"],
                   final_test_acc=f"{tested[-1]['test_acc']:.4f}",
                   final_train_loss=f"{rows[-1]['train_loss']:.4f}")
    return row


def write_tables(rows, out, args):
    """ablation.csv and ablation.md in `out`; delta_final is against the baseline's row."""
    base = next((r for r in rows if r["variant"] == "baseline" and "final_test_acc" in r), None)
    for r in rows:
        if base is not None and "final_test_acc" in r:
            r["delta_final"] = f"{float(r['final_test_acc']) - float(base['final_test_acc']):+.4f}"
    with open(out / "ablation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    columns = FIELDS[:-1]
    lines = [f"# Ablation: {args.model} width {args.width:g}, {args.epochs} epochs, seed "
             f"{args.seed}", "",
             f"Written by `{shown([sys.executable, *sys.argv])}` on {platform.node()} "
             f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs), "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. delta_final: final test "
             "accuracy minus the baseline's. The accuracies with --ema are the averaged "
             "model's; with --tta, augmented ones.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    lines += ["", "## Commands", ""]
    lines += [f"- {r['variant']}: `{r['command']}`" for r in rows]
    (out / "ablation.md").write_text("\n".join(lines) + "\n")


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
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    known = {name: (change, options) for name, change, options in VARIANTS}
    chosen = args.variants.split(",")
    unknown = [name for name in chosen if name not in known]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(known)}")
    out = Path(args.out)
    rows = []
    for name in chosen:
        change, options = known[name]
        argv_run = command(args, name, options)
        if args.dry_run:
            print(shown(argv_run))
            continue
        (out / "runs").mkdir(parents=True, exist_ok=True)
        print(f"{name}: {shown(argv_run)}", flush=True)
        code, seconds = run(argv_run, out / "runs" / f"{name}.log")
        rows.append(summarise(name, change, argv_run, code, seconds, out / "runs" / name))
        print(f"  {rows[-1]['status']}, best {rows[-1].get('best_test_acc', '-')}, "
              f"{seconds:.0f} s", flush=True)
        write_tables(rows, out, args)  # after every run, so an interrupted ablation keeps its rows
    return 0


if __name__ == "__main__":
    sys.exit(main())
