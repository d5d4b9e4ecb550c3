"""Executes notebooks/compare.ipynb on a synthetic results folder so it cannot rot."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.test_report import write_synthetic_results

ROOT = Path(__file__).resolve().parents[1]


def test_compare_notebook_runs(tmp_path):
  results = write_synthetic_results(tmp_path / "results")
  nb = nbformat.read(ROOT / "notebooks" / "compare.ipynb", as_version=4)
  (param_cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  param_cell.source = f"RESULTS = {str(results)!r}\nOUT = {str(tmp_path / 'report')!r}"
  NotebookClient(nb, timeout=180, kernel_name="python3",
                 resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 2
  markdown = "".join(o["data"]["text/markdown"] for o in outputs
                     if "text/markdown" in o.get("data", {}))
  assert "Comparison table" in markdown and "KD beats the control" in markdown
  assert (tmp_path / "report" / "table.csv").exists()
