"""Finished training runs side by side, from their history.csv files: a markdown table of each
run's final test accuracy, its difference from the first run's (the reference), its final
training loss and its median seconds per epoch; with --images, also the training images each
run passed through (the sum of history.csv's train_images column, which data pruning makes
smaller than epochs x the training set: runs of equal cost have equal counts).

    python benchmarks/compare_runs.py runs/base/history.csv runs/lr0.4/history.csv
    python benchmarks/compare_runs.py results/ablation/recipe16/*-history.csv --reference base

A run is named by its file: `base-history.csv` and `runs/base/history.csv` are both "base".
Only what the files hold is printed; a run whose last epoch has no test accuracy is refused,
as its final accuracy is unknown.
"""

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's minimobile

from minimobile.train import read_history  # noqa: E402

COLUMNS = ("run", "epochs", "final_test_acc", "delta", "final_train_loss", "median_epoch_s")


def run_name(path):
    """`x/base-history.csv` -> "base"; `x/base/history.csv` -> "base"."""
    path = Path(path)
    if path.name == "history.csv":
        return path.parent.name
    return path.name.removesuffix(".csv").removesuffix("-history")


def summary(path):
    rows = read_history(path)
    if not rows:
        raise ValueError(f"{path} has no epochs")
    last = rows[-1]
    if last["test_acc"] is None:
        raise ValueError(f"{path}: its last epoch ({last['epoch']}) was not tested, so its "
                         "final accuracy is unknown")
    seconds = [r["epoch_seconds"] for r in rows if r.get("epoch_seconds") is not None]
    return {"run": run_name(path), "epochs": last["epoch"], "final_test_acc": last["test_acc"],
            "final_train_loss": last["train_loss"],
            "median_epoch_s": statistics.median(seconds) if seconds else None,
            # Histories written before the column existed leave it out: the total is unknown.
            "train_images": (sum(r["train_images"] for r in rows)
                             if all(r.get("train_images") is not None for r in rows) else None)}


def _blank_if_none(value):
    return "" if value is None else value


def table(paths, reference=None, images=False):
    """The markdown lines of the table; delta is against the run named `reference` (default:
    the first); images adds the train_images column (blank where a history lacks it)."""
    runs = [summary(p) for p in paths]
    names = [r["run"] for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"two files give the same run name: {names}")
    reference = names[0] if reference is None else reference
    if reference not in names:
        raise ValueError(f"--reference: expected one of {names}, got {reference!r}")
    base = runs[names.index(reference)]["final_test_acc"]
    columns = COLUMNS + (("train_images",) if images else ())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in runs:
        seconds = "" if r["median_epoch_s"] is None else f"{r['median_epoch_s']:.0f}"
        lines.append(f"| {r['run']} | {r['epochs']} | {r['final_test_acc']:.4f} | "
                     f"{r['final_test_acc'] - base:+.4f} | {r['final_train_loss']:.4f} | "
                     f"{seconds} |" + (f" {_blank_if_none(r['train_images'])} |" if images
                                       else ""))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("histories", nargs="+", help="history.csv files of finished runs")
    parser.add_argument("--reference", help="the run the deltas are taken against "
                        "(default: the first)")
    parser.add_argument("--images", action="store_true", help="add the number of training "
                        "images each run passed through (history.csv's train_images)")
    args = parser.parse_args(argv)
    try:
        lines = table(args.histories, args.reference, args.images)
    except (OSError, ValueError) as e:
        print(f"compare_runs: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
