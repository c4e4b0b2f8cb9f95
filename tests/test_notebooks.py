"""Both notebooks execute top to bottom (nbclient, kernel ``python3`` = this venv's python), so they never rot.

``01_explore_events`` reads a tiny synthetic store via ``TAILOR_NOTEBOOK_DATA``; ``02_compare_runs``
reads a temporary MLflow store (``MLFLOW_TRACKING_URI``) holding two quick training runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from features.synth import SynthConfig, generate_store, write_store
from training import pipeline, tracking

from .test_tracking import make_settings

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``python3`` kernelspec pointing at this interpreter, first on JUPYTER_PATH; quiet, headless env."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "tailor", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path / "home"))


def execute(name: str) -> str:
    """Run a notebook in a fresh kernel; return all its text output (errors fail the test)."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)  # type: ignore[no-untyped-call]
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=240, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


@pytest.mark.usefixtures("kernel")
def test_explore_events_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = generate_store(SynthConfig(users=60, items=25, days=21, seed=2))
    write_store(store, tmp_path / "store")
    monkeypatch.setenv("TAILOR_NOTEBOOK_DATA", str(tmp_path / "store"))
    out = execute("01_explore_events.ipynb")
    users = store.events["user_id"].n_unique()
    assert f"{store.events.height:,} valid events of {store.events.height:,} read, {users:,} users" in out
    assert "of (shopper, item) interactions" in out


@pytest.mark.usefixtures("kernel")
def test_compare_runs_notebook(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(tmp_path_factory, "notebook-home")
    data = tmp_path_factory.mktemp("nb-data") / "shop"
    write_store(generate_store(SynthConfig(users=60, items=25, days=28, seed=4)), data)
    with tracking.quiet_mlflow():
        runs = [
            pipeline.train(name, None, data, None, settings, test_days=7.0, ks=(10,), register=False, refit=False)
            for name in ("item_knn", "popularity")
        ]
    best = max(runs, key=lambda run: run.metrics["new_items.ndcg_at_10"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    out = execute("02_compare_runs.ipynb")
    assert f"tracking store: {settings.tracking_uri}" in out
    assert "experiments: ['tailor/shop']" in out
    assert f"best run {best.run_id}" in out
