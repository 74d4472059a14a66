"""Every notebook runs top to bottom in quick mode (MINIMOBILE_QUICK=1: small sizes, few
repetitions, fake data), in a fresh kernel whose working directory is notebooks/.

    python -m pytest -q -m slow tests/test_notebooks.py
"""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
from nbclient.exceptions import CellExecutionError  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT = 300  # seconds; quick mode needs a fraction of this


def _failure(path, nb, error):
    """The failing cell's source and its error, so the test report says what broke."""
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return (f"{path.name}, cell {i}:\n{cell.source}\n\n"
                        f"{output['ename']}: {output['evalue']}")
    return f"{path.name}: {error}"


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_runs_in_quick_mode(path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute(env={**os.environ, "MINIMOBILE_QUICK": "1"})
    except CellExecutionError as e:
        pytest.fail(_failure(path, nb, e), pytrace=False)


def test_every_notebook_is_found():
    names = {p.name[:2] for p in NOTEBOOKS.glob("*.ipynb")}
    assert {"01", "02", "03", "04", "05", "06"} <= names


def _load_runner():
    import importlib.util
    spec = importlib.util.spec_from_file_location("run_notebooks", NOTEBOOKS / "run_notebooks.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    return runner


@pytest.mark.slow
def test_runner_saves_outputs_in_place_and_leaves_a_failing_notebook_untouched(tmp_path):
    environment = dict(os.environ)
    from nbformat.v4 import new_code_cell, new_notebook
    runner = _load_runner()
    good, bad = tmp_path / "good.ipynb", tmp_path / "bad.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(
        "import os; print(os.environ.get('MINIMOBILE_QUICK'))")]), good)
    nbformat.write(new_notebook(cells=[new_code_cell("1 / 0")]), bad)
    before = bad.read_bytes()
    runner.execute_in_place(good, quick=True, cell_timeout=60)
    assert nbformat.read(good, as_version=4).cells[0].outputs[0]["text"] == "1\n"
    with pytest.raises(CellExecutionError):
        runner.execute_in_place(bad, quick=False, cell_timeout=60)
    assert bad.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ipynb", "good.ipynb"]
    assert dict(os.environ) == environment  # the quick flag went to the kernel only
