"""The comparison job: grid of runs -> latency benchmark per model shape -> tables and plots.

Latency depends on the model's shape, not its weights, so each distinct shape of the grid (teacher,
3-layer student, 2-layer student, ...) is timed once, in the same process and on the same machine as
the rest of the table, and attached to every record of that shape. Benchmarks are cached in
`<results_dir>/latency.json` per backend; `--rebench` style reruns just delete that file.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import cost
from research import grid as grid_lib
from research import report
from research.models import encoder


def shape_key(model: dict[str, Any]) -> str:
  """Identifies a model shape: what latency depends on."""
  return "L{num_layers}-D{hidden_size}-H{num_heads}-F{intermediate_size}-C{num_labels}".format(
      **model)


def benchmark_shape(model: dict[str, Any], *, seq_len: int, iters: int, warmup: int,
                    throughput_batch: int, throughput_iters: int = 10,
                    backend: str | None = None) -> dict[str, Any]:
  """Times batch-1 latency and batch-`throughput_batch` throughput of one classifier shape."""
  cfg = encoder.EncoderConfig(**{k: v for k, v in model.items()
                                 if k in encoder.EncoderConfig.__dataclass_fields__})
  module = encoder.EncoderClassifier(cfg)
  ids = jnp.ones((1, seq_len), jnp.int32)
  params = jax.jit(lambda: module.init(jax.random.PRNGKey(0), ids, ids, ids * 0)["params"])()

  def apply_fn(p, batch):
    return module.apply({"params": p}, batch["input_ids"], batch["attention_mask"],
                        batch["token_type_ids"])["logits"]

  def make_batch(b):
    return {"input_ids": np.full((b, seq_len), 1000, np.int32),
            "attention_mask": np.ones((b, seq_len), np.int32),
            "token_type_ids": np.zeros((b, seq_len), np.int32)}

  # Batch-1 latency over `iters` runs; throughput at the large batch over fewer (each is long).
  out = cost.benchmark_latency(apply_fn, make_batch, params=params, batch_sizes=(1,),
                               warmup=warmup, iters=iters, backend=backend)
  big = cost.benchmark_latency(apply_fn, make_batch, params=params,
                               batch_sizes=(throughput_batch,), warmup=2,
                               iters=throughput_iters, backend=backend)
  out.update({k: v for k, v in big.items() if k.startswith(("batch", "throughput"))
              and k != "batch_sizes"})
  out["batch_sizes"] = [1, throughput_batch]
  out["throughput_iters"] = throughput_iters
  out["seq_len"] = seq_len
  out["dtype"] = cfg.dtype
  return out


def attach_latency(records: list[dict[str, Any]], grid: ml_collections.ConfigDict,
                   results_dir: pathlib.Path) -> None:
  """Benchmarks every model shape in `records` (cached) and sets record["latency"]."""
  path = results_dir / "latency.json"
  cache = json.loads(path.read_text()) if path.exists() else {}
  backends = ["cpu"] + (["gpu"] if any(d.platform == "gpu" for d in jax.devices()) else [])
  shapes = {shape_key(r["model"]): r["model"] for r in records if "model" in r}
  for key, model in sorted(shapes.items()):
    for backend in backends:
      ck = f"{key}/{backend}"
      if ck not in cache:
        print(f"benchmarking {key} on {backend} ...", flush=True)
        cache[ck] = benchmark_shape(model, seq_len=grid.latency.seq_len, iters=grid.latency.iters,
                                    warmup=grid.latency.warmup,
                                    throughput_batch=grid.latency.throughput_batch,
                                    throughput_iters=grid.latency.throughput_iters,
                                    backend=backend)
        path.write_text(json.dumps(cache, indent=1, sort_keys=True))
  for r in records:
    if "model" in r:
      key = shape_key(r["model"])
      r["latency"] = [cache[f"{key}/{b}"] for b in backends if f"{key}/{b}" in cache]
      if "cell" in r:  # persist, so `python -m research.report` alone shows the same table
        cell_path = grid_lib.cell_file(results_dir, r["cell"])
        if cell_path.exists():
          cell_path.write_text(json.dumps(r, indent=1, sort_keys=True))


def main(grid: ml_collections.ConfigDict, *, only: Sequence[str] = (),
         report_only: bool = False) -> dict[str, pathlib.Path]:
  """Runs the grid (unfinished cells only), benchmarks, writes and prints the table."""
  results_dir = pathlib.Path(grid.results_dir)
  results_dir.mkdir(parents=True, exist_ok=True)
  if not report_only:
    grid_lib.run_grid(grid, only=only)
  # The table covers every record in results_dir, not only the cells this call ran.
  records = report.load_records(results_dir)
  attach_latency(records, grid, results_dir)
  paths = report.write_report(records, out_dir=results_dir)
  print(paths["table.md"].read_text())
  for name, p in paths.items():
    print(f"{name}: {p}")
  return paths
