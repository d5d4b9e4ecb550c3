"""Latency and throughput per model shape, cached in `<results_dir>/latency.json`.

Latency depends on a model's shape, not its weights, so each distinct shape of a results folder
(teacher, 3-layer student, ...) is timed once per backend with freshly initialised weights and the
timing is shared by every record of that shape. The cache is keyed "<shape>/<backend>", so a table
trained on one machine can be timed later on another's accelerator
(`python -m experiments.bench_latency --results_dir results/bfsi` on a GPU machine) and the
report shows both. This module imports no data or training code, so it runs wherever jax and flax do.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research import cost
from research.models import encoder

CACHE_NAME = "latency.json"


def shape_key(model: dict[str, Any]) -> str:
  """Identifies a model shape: what latency depends on (the family's key)."""
  return encoder.shape_key(model)


def available_backends() -> list[str]:
  """"cpu" plus each accelerator platform jax sees here ("gpu", "tpu")."""
  accel = sorted({d.platform for d in jax.devices()} - {"cpu"})
  return ["cpu"] + accel


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


def load_cache(results_dir: str | pathlib.Path) -> dict[str, Any]:
  path = pathlib.Path(results_dir) / CACHE_NAME
  if not path.exists():
    return {}
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); delete it to re-benchmark every shape.") from e


def record_shapes(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """Shape key -> model dict, over the records that name their model."""
  return {shape_key(r["model"]): r["model"] for r in records if "model" in r}


def benchmark_missing(shapes: dict[str, dict[str, Any]], results_dir: str | pathlib.Path, *,
                      backends: Sequence[str], seq_len: int, iters: int, warmup: int,
                      throughput_batch: int, throughput_iters: int) -> dict[str, Any]:
  """Times every (shape, backend) not yet in the cache; writes the cache after each one."""
  path = pathlib.Path(results_dir) / CACHE_NAME
  cache = load_cache(results_dir)
  for key, model in sorted(shapes.items()):
    for backend in backends:
      ck = f"{key}/{backend}"
      if ck in cache:
        continue
      print(f"benchmarking {key} on {backend} ...", flush=True)
      cache[ck] = benchmark_shape(model, seq_len=seq_len, iters=iters, warmup=warmup,
                                  throughput_batch=throughput_batch,
                                  throughput_iters=throughput_iters, backend=backend)
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps(cache, indent=1, sort_keys=True))
  return cache


def for_shape(cache: dict[str, Any], key: str) -> list[dict[str, Any]]:
  """Every cached benchmark of one shape, CPU first (whatever backends ran it, here or elsewhere)."""
  found = {ck.rsplit("/", 1)[1]: v for ck, v in cache.items() if ck.rsplit("/", 1)[0] == key}
  return [found[b] for b in sorted(found, key=lambda b: (b != "cpu", b))]
