"""Execute notebooks from their Jupytext sources and save the outputs in the paired .ipynb.

    python notebooks/run_notebooks.py                 # every notebooks/NN_*.py, full mode
    python notebooks/run_notebooks.py 01 05           # only those whose names start so
    python notebooks/run_notebooks.py --quick         # quick mode (MINIMOBILE_QUICK=1): a check

Each notebook's source is `notebooks/NN_name.py` (Jupytext percent format); the `.ipynb` beside
it is the same cells with the outputs the last run saved. To change only text or code without
re-running, update the .ipynb's cells and keep its outputs with
`jupytext --update --to ipynb notebooks/NN_name.py`; tests/test_notebooks.py fails while a pair
differs.

Full mode unsets MINIMOBILE_QUICK, so the numbers are the real ones: run it on a quiet machine.
Each notebook runs in a fresh kernel with notebooks/ as its working directory and this checkout
first on PYTHONPATH, so it imports the library beside it, not another installed copy. The
executed notebook is written to a temporary file and renamed over the .ipynb only when every
cell succeeded, so an interrupted or failing run leaves the committed notebook untouched. The
wall time of each notebook is printed (the README quotes these).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from jupytext.combine import combine_inputs_with_outputs
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def sources(folder=HERE):
    """The notebook sources: `NN_name.py` files (this runner and other scripts are not)."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.py"))


def kernel_environment(quick):
    env = {k: v for k, v in os.environ.items() if k != "MINIMOBILE_QUICK"}
    if quick:
        env["MINIMOBILE_QUICK"] = "1"
    if env.get("MINIMOBILE_DATA"):
        # The kernels run in notebooks/, so a path relative to where this runner was started
        # (MINIMOBILE_DATA=../shared/... from the repository) is made absolute here.
        env["MINIMOBILE_DATA"] = str(Path(env["MINIMOBILE_DATA"]).expanduser().resolve())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def execute(nb, quick, cell_timeout, workdir=HERE):
    """Run `nb` in a fresh kernel, filling in its outputs; returns the wall time in seconds."""
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    start = time.perf_counter()
    client.execute(env=kernel_environment(quick))  # the kernel's environment, not ours
    return time.perf_counter() - start


def read_source(source):
    """The notebook in `source` (NN_name.py), keeping the cell ids of the .ipynb beside it so
    that a re-run changes only outputs in the .ipynb's diff."""
    nb = jupytext.read(source)
    paired = Path(source).with_suffix(".ipynb")
    if paired.exists():
        nb = combine_inputs_with_outputs(nb, nbformat.read(paired, as_version=4))
    return nb


def execute_in_place(source, quick, cell_timeout, save=True):
    """Execute `source` (NN_name.py) and write the result to NN_name.ipynb beside it (unless
    not `save`: quick mode's outputs come from small sizes and fake data, and must never
    replace the real ones)."""
    source = Path(source)
    nb = read_source(source)
    seconds = execute(nb, quick, cell_timeout, workdir=source.parent)
    if not save:
        return seconds
    fd, tmp = tempfile.mkstemp(suffix=".ipynb", dir=source.parent)
    os.close(fd)
    try:
        jupytext.write(nb, tmp, fmt="ipynb")
        os.replace(tmp, source.with_suffix(".ipynb"))
    except BaseException:
        os.unlink(tmp)
        raise
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefixes", nargs="*", help="run only notebooks whose names start so")
    parser.add_argument("--quick", action="store_true",
                        help="quick mode (MINIMOBILE_QUICK=1): small sizes and fake data, a "
                        "check that every cell runs; the .ipynb files are left as they are")
    parser.add_argument("--cell-timeout", type=int, default=None,
                        help="seconds per cell (default: none; 06 trains for a long time)")
    args = parser.parse_args(argv)
    paths = [p for p in sources()
             if not args.prefixes or any(p.name.startswith(x) for x in args.prefixes)]
    if not paths:
        parser.error(f"no notebook in {HERE} matches {args.prefixes}")
    failed = []
    for path in paths:
        print(f"{path.stem} ({'quick' if args.quick else 'full'} mode) ...", flush=True)
        try:
            seconds = execute_in_place(path, args.quick, args.cell_timeout,
                                       save=not args.quick)
        except CellExecutionError as e:
            print(f"  FAILED, left unchanged:\n{e}", file=sys.stderr)
            failed.append(path.name)
            continue
        print(f"  done in {seconds / 60:.1f} min ({seconds:.0f} s)"
              + (", outputs not saved (quick mode)" if args.quick else ""), flush=True)
    if failed:
        print("failed:", ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
