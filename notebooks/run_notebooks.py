"""Execute notebooks in place, saving their outputs: what the committed notebooks show.

    python notebooks/run_notebooks.py                 # every notebooks/*.ipynb, full mode
    python notebooks/run_notebooks.py 01 05           # only those whose names start so
    python notebooks/run_notebooks.py --quick         # quick mode (MINIMOBILE_QUICK=1)

Full mode unsets MINIMOBILE_QUICK, so the numbers are the real ones: run it on a quiet machine.
Each notebook runs in a fresh kernel with notebooks/ as its working directory. The executed
notebook is written to a temporary file beside it and renamed over the original only when every
cell succeeded, so an interrupted or failing run leaves the committed notebook untouched. The
wall time of each notebook is printed (the README quotes these).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent


def execute_in_place(path, quick, cell_timeout):
    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != "MINIMOBILE_QUICK"}
    if quick:
        env["MINIMOBILE_QUICK"] = "1"
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(HERE)}})
    start = time.perf_counter()
    client.execute(env=env)  # the kernel's environment, passed on to its start
    seconds = time.perf_counter() - start
    fd, tmp = tempfile.mkstemp(suffix=".ipynb", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefixes", nargs="*", help="run only notebooks whose names start so")
    parser.add_argument("--quick", action="store_true", help="quick mode (MINIMOBILE_QUICK=1)")
    parser.add_argument("--cell-timeout", type=int, default=None,
                        help="seconds per cell (default: none; 06 trains for a long time)")
    args = parser.parse_args(argv)
    paths = sorted(p for p in HERE.glob("*.ipynb")
                   if not args.prefixes or any(p.name.startswith(x) for x in args.prefixes))
    if not paths:
        parser.error(f"no notebook in {HERE} matches {args.prefixes}")
    failed = []
    for path in paths:
        print(f"{path.name} ({'quick' if args.quick else 'full'} mode) ...", flush=True)
        try:
            seconds = execute_in_place(path, args.quick, args.cell_timeout)
        except CellExecutionError as e:
            print(f"  FAILED, left unchanged:\n{e}", file=sys.stderr)
            failed.append(path.name)
            continue
        print(f"  done in {seconds / 60:.1f} min ({seconds:.0f} s)", flush=True)
    if failed:
        print("failed:", ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
