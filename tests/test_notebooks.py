"""Every notebook in notebooks/ runs top to bottom in smoke mode (``CI`` set: tiny sizes).

A notebook that reads the benchmark data (it names ``PYRO_DLF_DATA_DIR``) carries the ``data`` marker
and runs on the tests' data root (see ``tests/shared_data.py``); without the data, its smoke mode runs
on a stand-in that ships with scikit-learn.
"""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

import shared_data

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _reads_data(path: pathlib.Path) -> bool:
    return shared_data.DATA_DIR_ENV in path.read_text(encoding="utf-8")


def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 6, [p.name for p in NOTEBOOKS]
    assert any(_reads_data(p) for p in NOTEBOOKS)  # em_vs_svi reads the UCI sets


@pytest.mark.parametrize(
    "path", [pytest.param(p, marks=pytest.mark.data) if _reads_data(p) else p for p in NOTEBOOKS], ids=lambda p: p.stem
)
def test_notebook_runs_in_smoke_mode(path, monkeypatch, tmp_path):
    if _reads_data(path):
        # The kernel inherits the environment: point it at the tests' data root, or at an empty folder
        # when there is none, so the notebook finds exactly the data the tests find.
        root = shared_data.data_root()
        monkeypatch.setenv(shared_data.DATA_DIR_ENV, str(root if root is not None else tmp_path))
        monkeypatch.delenv("PYRO_DLF_UCI_DIR", raising=False)
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    first = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert 'smoke_test = "CI" in os.environ' in first.source, f"{path.name}: the first code cell must set smoke_test"
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any failure
