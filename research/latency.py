"""Latency and throughput per model shape, one benchmark pass per table, in `<results>/latency.json`.

Latency depends on a model's shape, not its weights, so each distinct shape of a results folder
(teacher, 3-layer student, ...) is timed with freshly initialised weights and the timing is shared
by every record of that shape. All shapes of a table are timed in one process, in one pass:
compiled first, then `rounds` rounds in which every shape runs its batch-1 and batch-B calls in
turn (the order rotating per round), so load on a shared machine hits every shape alike; a shape's
p50 is the median of its per-round medians, and the pass records their spread (IQR). Timings made at
different times (a shape added to a table later) are not compared with each other: `table_pass`
re-times the whole table when its entries do not come from one pass. The cache is keyed
"<shape>/<backend>", so a table trained on one machine can be timed later on another's accelerator
(`python -m experiments.bench_latency --results_dir results/bfsi` on a GPU machine) and the report
shows both. This module imports no data or training code, so it runs wherever jax and flax do.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import time
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


def _classifier(model: dict[str, Any], seq_len: int):
  """(config, random params, apply_fn, make_batch) of one classifier shape (speed only)."""
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
  return cfg, params, apply_fn, make_batch


def benchmark_shape(model: dict[str, Any], *, seq_len: int, iters: int, warmup: int,
                    throughput_batch: int, throughput_iters: int = 10,
                    backend: str | None = None) -> dict[str, Any]:
  """Times batch-1 latency and batch-`throughput_batch` throughput of one classifier shape."""
  cfg, params, apply_fn, make_batch = _classifier(model, seq_len)

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


def _compiled(model: dict[str, Any], *, seq_len: int, batch: int, device: Any):
  """A compiled batch-`batch` forward of the shape and its on-device inputs."""
  cfg, params, apply_fn, make_batch = _classifier(model, seq_len)
  x = make_batch(batch)
  args = jax.device_put((params, x), device)
  fn = jax.jit(apply_fn).lower(*args).compile()
  return (lambda: jax.block_until_ready(fn(*args))), cfg.dtype


def _times(call, n: int) -> list[float]:
  out = []
  for _ in range(n):
    t0 = time.perf_counter()
    call()
    out.append(time.perf_counter() - t0)
  return out


def spread(round_medians: Sequence[float]) -> float:
  """Interquartile range of the per-round medians: robust to a round that other load hit."""
  q25, q75 = np.percentile(np.asarray(round_medians, np.float64), [25, 75])
  return float(q75 - q25)


def _summary(rounds_s: list[list[float]], batch: int) -> dict[str, Any]:
  """p50 = median of per-round medians (ms); spread = their IQR; p90 over all calls."""
  meds = [statistics.median(r) * 1e3 for r in rounds_s]
  flat = [t for r in rounds_s for t in r]
  return {f"batch{batch}_p50_ms": statistics.median(meds),
          f"batch{batch}_p90_ms": float(np.percentile(np.asarray(flat) * 1e3, 90)),
          f"batch{batch}_mean_ms": float(np.mean(flat) * 1e3),
          f"batch{batch}_round_p50_ms": meds,
          f"batch{batch}_spread_ms": spread(meds)}


def benchmark_table(shapes: dict[str, dict[str, Any]], *, backend: str, seq_len: int, iters: int,
                    warmup: int, throughput_batch: int, throughput_iters: int, rounds: int = 5
                    ) -> dict[str, dict[str, Any]]:
  """Times every shape in one pass: all compiled first, then `rounds` interleaved rounds.

  Each round runs, per shape (order rotated by one each round), `max(1, iters // rounds)` timed
  batch-1 calls and `max(1, throughput_iters // rounds)` at `throughput_batch`, after `warmup`
  untimed calls per shape in the first round. A benchmark: report it, never assert on it.

  Returns:
    {shape key: benchmark dict} with the `cost.benchmark_latency` fields (device, backend,
    host_cpu, batch1_p50_ms, batch1_p90_ms, throughput_eps, ...) plus per-round medians, their
    spread (`batch1_spread_ms`, their interquartile range), `rounds` and `pass` (one id for the whole pass).
  """
  if rounds < 1 or iters < 1 or throughput_iters < 1:
    raise ValueError(f"benchmark_table: need rounds, iters, throughput_iters >= 1 (got {rounds}, "
                     f"{iters}, {throughput_iters}).")
  device = jax.devices(backend)[0]
  keys = sorted(shapes)
  calls, dtypes = {}, {}
  for key in keys:
    print(f"compiling {key} on {backend} ...", flush=True)
    for b in (1, throughput_batch):
      calls[key, b], dtypes[key] = _compiled(shapes[key], seq_len=seq_len, batch=b, device=device)
  for key in keys:
    for b in (1, throughput_batch):
      _times(calls[key, b], warmup)
  per = {(k, b): [] for k in keys for b in (1, throughput_batch)}
  n1, nb = max(1, iters // rounds), max(1, throughput_iters // rounds)
  for r in range(rounds):
    for key in keys[r % len(keys):] + keys[:r % len(keys)]:
      per[key, 1].append(_times(calls[key, 1], n1))
      per[key, throughput_batch].append(_times(calls[key, throughput_batch], nb))
  pass_id = time.strftime("%Y-%m-%dT%H:%M:%S")
  out = {}
  for key in keys:
    big = _summary(per[key, throughput_batch], throughput_batch)
    out[key] = {"device": device.device_kind, "backend": device.platform,
                "host_cpu": f"{cost.host_cpu_name()}, {os.cpu_count()} cores",
                "iters": n1 * rounds, "warmup": warmup, "rounds": rounds, "pass": pass_id,
                "pass_shapes": len(keys), "batch_sizes": [1, throughput_batch],
                **_summary(per[key, 1], 1), **big, "throughput_batch_size": throughput_batch,
                "throughput_eps": throughput_batch / (big[f"batch{throughput_batch}_p50_ms"] / 1e3),
                "throughput_iters": nb * rounds, "seq_len": seq_len, "dtype": dtypes[key]}
  return out


def needs_pass(cache: dict[str, Any], keys: Iterable[str], backend: str) -> bool:
  """True when the table's shapes on `backend` are not all timed, or not in one pass."""
  entries = [cache.get(f"{k}/{backend}") for k in keys]
  return any(e is None for e in entries) or len({e.get("pass") for e in entries}) != 1 or \
      entries[0].get("pass") is None


def table_pass(shapes: dict[str, dict[str, Any]], results_dir: str | pathlib.Path, *,
               backends: Sequence[str], retime: bool = False, **settings: Any) -> dict[str, Any]:
  """Times all `shapes` on each backend in one pass unless they already come from one pass
  (always with `retime`); writes the cache. Entries of other shapes or backends are kept.

  Args:
    shapes: shape key -> model dict (`record_shapes`).
    results_dir: holds latency.json.
    backends: the backends to (re-)time, present on this machine.
    retime: time again even when a complete pass is cached.
    **settings: `benchmark_table` arguments (seq_len, iters, warmup, throughput_batch,
      throughput_iters, rounds).
  """
  path = pathlib.Path(results_dir) / CACHE_NAME
  cache = load_cache(results_dir)
  for backend in backends:
    if not shapes or not (retime or needs_pass(cache, shapes, backend)):
      continue
    print(f"latency: one pass over {len(shapes)} shapes on {backend}, "
          f"{settings.get('rounds', 5)} rounds", flush=True)
    for key, bench in benchmark_table(shapes, backend=backend, **settings).items():
      cache[f"{key}/{backend}"] = bench
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cache, indent=1, sort_keys=True))
  return cache


def benchmark_missing(shapes: dict[str, dict[str, Any]], results_dir: str | pathlib.Path, *,
                      backends: Sequence[str], **settings: Any) -> dict[str, Any]:
  """`table_pass` without `retime` (the name earlier callers use): a table with a shape missing
  is timed again as a whole, in one pass."""
  return table_pass(shapes, results_dir, backends=backends, **settings)


def for_shape(cache: dict[str, Any], key: str) -> list[dict[str, Any]]:
  """Every cached benchmark of one shape, CPU first (whatever backends ran it, here or elsewhere)."""
  found = {ck.rsplit("/", 1)[1]: v for ck, v in cache.items() if ck.rsplit("/", 1)[0] == key}
  return [found[b] for b in sorted(found, key=lambda b: (b != "cpu", b))]
