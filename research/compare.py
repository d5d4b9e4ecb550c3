"""The comparison job: grid of runs -> latency benchmark per model shape -> tables and plots.

Latency depends on the model's shape, not its weights, so each distinct shape of the grid (teacher,
3-layer student, 2-layer student, ...) is timed once per backend of this machine (research/latency.py)
and attached to every record of that shape. Benchmarks are cached in `<results_dir>/latency.json`;
to re-time, delete that file. Shapes timed on another machine's accelerator (see
experiments/bench_latency.py) are kept and shown too.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import ml_collections

from research import grid as grid_lib
from research import latency
from research import report
from research.train import record as record_lib


def attach_latency(records: list[dict[str, Any]], grid: ml_collections.ConfigDict,
                   results_dir: pathlib.Path) -> None:
  """Benchmarks every model shape in `records` (cached) and sets record["latency"]."""
  lat = grid.latency
  cache = latency.benchmark_missing(
      latency.record_shapes(records), results_dir, backends=latency.available_backends(),
      seq_len=lat.seq_len, iters=lat.iters, warmup=lat.warmup,
      throughput_batch=lat.throughput_batch, throughput_iters=lat.throughput_iters)
  for r in records:
    if "model" in r:
      # Every backend cached for the shape, including ones timed on another machine.
      r["latency"] = latency.for_shape(cache, latency.shape_key(r["model"]))
      if "cell" in r:  # persist, so `python -m research.report` alone shows the same table
        cell_path = grid_lib.cell_file(results_dir, r["cell"])
        if cell_path.exists():  # atomic: a kill never leaves a torn record
          record_lib.write_json(cell_path, r, default=str)


def check_records(results_dir: pathlib.Path) -> None:
  """Every cell record parses; else one line naming the file and the fix."""
  for path in sorted((results_dir / "cells").glob("*.json")):
    try:
      json.loads(path.read_text())
    except ValueError as e:
      raise ValueError(f"cell record {path} does not parse ({e}); run the grid without "
                       f"--report_only to rerun that cell, or delete the file.") from None


def main(grid: ml_collections.ConfigDict, *, only: Sequence[str] = (),
         report_only: bool = False, rerun_stale: bool = False) -> dict[str, pathlib.Path]:
  """Runs the grid (unfinished and, with `rerun_stale`, stale cells), benchmarks, writes and
  prints the table."""
  results_dir = pathlib.Path(grid.results_dir)
  results_dir.mkdir(parents=True, exist_ok=True)
  if not report_only:
    grid_lib.run_grid(grid, only=only, rerun_stale=rerun_stale)
  check_records(results_dir)
  # The table covers every record in results_dir, not only the cells this call ran.
  records = report.load_records(results_dir)
  attach_latency(records, grid, results_dir)
  paths = report.write_report(records, out_dir=results_dir)
  print(paths["table.md"].read_text())
  for name, p in paths.items():
    print(f"{name}: {p}")
  return paths
