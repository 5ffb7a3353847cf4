"""The discriminator-scores notebook: executes headless against a fresh run; committed notebooks carry no outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from test_analysis import tiny_run

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "discriminator_scores.ipynb"
SKIP_DIRS = {".git", ".venv", "outputs", ".ipynb_checkpoints", "node_modules", ".cache"}


def repository_notebooks() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.ipynb") if not SKIP_DIRS.intersection(p.relative_to(ROOT).parts))


def test_committed_notebooks_are_stripped():
    """Outputs and execution counts never enter git (run the notebook, then clear its outputs before committing)."""
    notebooks = repository_notebooks()
    assert NOTEBOOK in notebooks
    dirty = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
                dirty.append(f"{path.relative_to(ROOT)} cell {i}")
    assert not dirty, "notebooks with outputs or execution counts (clear them before committing): " + ", ".join(dirty)


def execute(run_dir: Path, monkeypatch) -> tuple[dict, dict]:
    """Run the notebook headless on `run_dir`: each code cell's outputs, and their text, by cell id."""
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel inherits this environment: the run to read, no display, offline.
    monkeypatch.setenv("GAD_RUN_DIR", str(run_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # "python3" is ipykernel's native kernel; jupyter_client starts it with this interpreter (sys.executable).
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = {cell.id: cell.outputs for cell in nb.cells if cell.cell_type == "code"}
    text = {
        k: "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in v) for k, v in outputs.items()
    }
    return outputs, text


def test_notebook_executes_headless(tmp_path_factory, monkeypatch):
    run_dir = tiny_run(tmp_path_factory)
    outputs, text = execute(run_dir, monkeypatch)
    assert str(run_dir) in text["setup"] and "adversarial phase from step 5" in text["setup"]
    for figure_cell in ("curves", "hist", "hack-corr", "hack-len"):
        assert any("image/png" in o.get("data", {}) for o in outputs[figure_cell]), figure_cell
    assert "pearson" in text["hack-corr"]
    assert "highest" in text["examples"] and "lowest" in text["examples"]
    assert "D score" in text["score-pairs"] and "Add: 45 23" in text["score-pairs"]
    # the file on disk was not touched
    assert all(not c.get("outputs") for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code")
