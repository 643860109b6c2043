"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel, and its results hold."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("keras")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"

CHECKS = """\
assert len(board) >= 2 and board["holdout_accuracy"].between(0, 1).all()
assert (labels == submission["Label"][: len(images)]).all()
assert (ensemble.load("quickstart").predict(images) == labels).all()
"""


def test_the_notebook_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
def test_the_quickstart_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENSEMBLE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("ENSEMBLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ENSEMBLE_KAGGLE", "0")
    for name in ("ENSEMBLE_DATA", "ENSEMBLE_STORAGE", "ENSEMBLE_ARTIFACTS", "MPLBACKEND"):
        monkeypatch.delenv(name, raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECKS))  # the test's own cell: fails the run if a check fails
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}})
    client.execute()
    texts = [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("the same labels as submission.csv: True" in t for t in texts)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the leaderboard's plot and the predicted digits
    assert (tmp_path / "runs" / "quickstart" / "submission.csv").is_file()
