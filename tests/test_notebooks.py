"""Every notebook's source is notebooks/NN_name.py (Jupytext percent format), paired with the
NN_name.ipynb that holds its last outputs. The pairs must agree cell for cell, and every source
runs top to bottom in quick mode (MINIMOBILE_QUICK=1: small sizes, few repetitions, fake data)
in a fresh kernel whose working directory is notebooks/, importing this checkout's library.

    python -m pytest -q tests/test_notebooks.py              # all of it
    python -m pytest -q tests/test_notebooks.py -k 03        # one notebook
"""

import importlib.util
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")
from nbclient.exceptions import CellExecutionError  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT = 300  # seconds; quick mode needs a fraction of this


def _load_runner():
    spec = importlib.util.spec_from_file_location("run_notebooks", NOTEBOOKS / "run_notebooks.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    return runner


runner = _load_runner()
SOURCES = runner.sources()


def _failure(path, nb, error):
    """The failing cell's source and its error, so the test report says what broke."""
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return (f"{path.name}, cell {i}:\n{cell.source}\n\n"
                        f"{output['ename']}: {output['evalue']}")
    return f"{path.name}: {error}"


def _cells(nb):
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def test_every_notebook_has_a_source_and_an_ipynb():
    sources = {p.stem for p in SOURCES}
    ipynbs = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    assert sources == ipynbs
    assert {"01", "02", "03", "04", "05", "06", "07"} <= {name[:2] for name in sources}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_ipynb_cells_match_their_jupytext_source(path):
    source = jupytext.read(path)
    paired = nbformat.read(path.with_suffix(".ipynb"), as_version=4)
    assert _cells(paired) == _cells(source), (
        f"{path.name} and its .ipynb differ: run `jupytext --update --to ipynb {path}` "
        f"(keeps outputs) or `python notebooks/run_notebooks.py {path.name[:2]}` (re-runs)")
    assert paired.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"


@pytest.mark.slow
@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(path):
    nb = jupytext.read(path)
    try:
        runner.execute(nb, quick=True, cell_timeout=CELL_TIMEOUT, workdir=NOTEBOOKS)
    except CellExecutionError as e:
        pytest.fail(_failure(path, nb, e), pytrace=False)


def test_the_kernels_get_an_absolute_data_path(monkeypatch, tmp_path):
    """The kernels run in notebooks/: a MINIMOBILE_DATA relative to where the runner started
    (the README's ../shared/cifar-10-batches-py) would point elsewhere from there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINIMOBILE_DATA", "data/cifar-10-batches-py")
    env = runner.kernel_environment(quick=False)
    assert env["MINIMOBILE_DATA"] == str(tmp_path / "data" / "cifar-10-batches-py")
    assert "MINIMOBILE_QUICK" not in env


@pytest.mark.slow
def test_runner_saves_outputs_in_place_and_leaves_a_failing_notebook_untouched(tmp_path):
    environment = dict(os.environ)
    good, bad = tmp_path / "01_good.py", tmp_path / "02_bad.py"
    good.write_text("# %%\nimport os; print(os.environ.get('MINIMOBILE_QUICK'))\n"
                    "# %%\nimport minimobile; print(minimobile.__file__)\n")
    bad.write_text("# %%\n1 / 0\n")
    runner.execute_in_place(good, quick=True, cell_timeout=60)
    outputs = [cell.outputs[0]["text"] for cell in nbformat.read(
        good.with_suffix(".ipynb"), as_version=4).cells]
    assert outputs[0] == "1\n"
    assert outputs[1].startswith(str(runner.ROOT / "minimobile"))  # this checkout's library
    with pytest.raises(CellExecutionError):
        runner.execute_in_place(bad, quick=False, cell_timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["01_good.ipynb", "01_good.py", "02_bad.py"]
    assert runner.sources(tmp_path) == [good, bad]
    assert dict(os.environ) == environment  # the quick flag went to the kernel only
