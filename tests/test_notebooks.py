"""Every notebook runs top to bottom in quick mode (MINIMOBILE_QUICK=1: small sizes, few
repetitions, fake data), in a fresh kernel whose working directory is notebooks/.

    python -m pytest -q -m slow tests/test_notebooks.py
"""

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
def test_notebook_runs_in_quick_mode(path, monkeypatch):
    monkeypatch.setenv("MINIMOBILE_QUICK", "1")  # the kernel inherits the environment
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(_failure(path, nb, e), pytrace=False)


def test_every_notebook_is_found():
    names = {p.name[:2] for p in NOTEBOOKS.glob("*.ipynb")}
    assert {"01", "02", "03", "04", "05", "06"} <= names
