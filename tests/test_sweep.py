"""The learning-rate sweep chooses on validation only (research/sweep.py)."""

import json

from configs import bfsi
from configs import grid_common
from research import grid as grid_lib
from research import sweep


def _record(path, method, lr, val, test, *, seed=0, metric="accuracy"):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({
      "task": "t", "method": method, "seed": seed, "primary_metric": metric, "steps": 100,
      "config": {"optim": {"lr": lr}, "train": {"epochs": 4.0}},
      "metrics": {"best_validation": {"step": 50, metric: val}, "test": {metric: test}}}))


def test_the_sweep_picks_the_best_validation_rate_and_never_reads_test(tmp_path):
  _record(tmp_path / "cells/t__kd_soft__seed0.json", "kd_soft", 1e-4, 0.90, 0.99)
  _record(tmp_path / "sweep/a/cells/t__kd_soft__seed0.json", "kd_soft", 2e-4, 0.92, 0.80)
  _record(tmp_path / "sweep/b/cells/t__kd_soft__seed0.json", "kd_soft", 5e-5, 0.92, 0.70)
  _record(tmp_path / "cells/t__kd_soft__seed1.json", "kd_soft", 3e-4, 0.99, 0.99, seed=1)
  chosen = sweep.write(tmp_path)
  assert chosen["t/kd_soft"]["lr"] == 5e-5            # a tie on validation: the smaller rate
  assert chosen["t/kd_soft"]["tried"] == [5e-5, 1e-4, 2e-4]  # seed 1 is not part of the sweep
  md = (tmp_path / "sweep/sweep.md").read_text()
  assert "| t | kd_soft | 5e-05 | accuracy | 0.9200 | 2.00 of 4 | **yes** |" in md


def test_a_sweep_cell_is_the_grid_cell_at_another_rate():
  g = bfsi.get_config("phrasebank_allagree:lr=5e-5")
  cells = grid_lib.cells(g)
  assert sorted(c.method for c in cells) == sorted(grid_common.SWEEP_METHODS)
  assert {c.config.optim.lr for c in cells} == {5e-5} and {c.seed for c in cells} == {0}
  assert g.results_dir == "results/bfsi/sweep/phrasebank_allagree_lr5e-05"
  main = {c.method: c for c in grid_lib.cells(bfsi.get_config("phrasebank"))
          if c.seed == 0 and not c.config.tags.series}
  for c in cells:  # same settings as the grid's own cell, but the rate
    a, b = c.config.to_dict(), main[c.method].config.to_dict()
    for d in (a, b):
      for key in ("name", "workdir"):
        d.pop(key)
      d["optim"].pop("lr")
      d["distill"].pop("teacher")
    assert a == b, c.method


def test_a_tasks_swept_rates_set_those_rows_only():
  """configs/bfsi.py: the sweep's choices (method_lr) set their rows' rate in the full-label cells;
  data-efficiency cells and the sweep cells keep their own."""
  g = bfsi.get_config("phrasebank")
  lr = {(c.method, bool(c.config.tags.series)): c.config.optim.lr for c in grid_lib.cells(g)}
  assert lr[("control_pretrained_init", False)] == lr[("kd_soft_smollm2_encoder", False)] == 2e-4
  assert lr[("control_pretrained_init", True)] == lr[("kd_soft", False)] == 1e-4
  sweep_cells = grid_lib.cells(bfsi.get_config("phrasebank_allagree:lr=5e-5"))
  assert {c.config.optim.lr for c in sweep_cells} == {5e-5}
