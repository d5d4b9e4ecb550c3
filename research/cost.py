"""What a method costs: parameters and bytes, FLOPs per step, latency and throughput.

Every number here is measured or counted from the actual arrays and compiled programs; the one
estimate (`analytic_encoder_flops`) is labelled as such wherever it is used (`source="analytic"`).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

TRAINABLE = "trainable"
FROZEN = "frozen"

SOURCE_XLA = "xla_cost_analysis"
SOURCE_ANALYTIC = "analytic"
SOURCE_UNAVAILABLE = "unavailable"


def _leaf_bytes(x: Any) -> int:
  """Bytes of one array-like leaf (jax/numpy array or ShapeDtypeStruct); 0 for non-arrays."""
  if not (hasattr(x, "shape") and hasattr(x, "dtype")):
    return 0
  return int(math.prod(x.shape)) * np.dtype(x.dtype).itemsize


def _leaf_size(x: Any) -> int:
  return int(math.prod(x.shape)) if hasattr(x, "shape") else 0


def param_counts(params: Any, labels: Any = None) -> dict[str, int]:
  """Counts parameters, split into trainable and frozen by a label pytree.

  Args:
    params: pytree of arrays (LoRA factors included if they are in the tree).
    labels: pytree with the same structure as `params` whose leaves are "trainable" or "frozen"
      (as produced by `research.masking`); None means everything is trainable.

  Returns:
    dict with `total`, `trainable`, `frozen` (element counts), `bytes_params` (all params, in their
    stored dtype) and `bytes_trainable`.
  """
  leaves, treedef = jax.tree.flatten(params)
  if labels is None:
    label_leaves = [TRAINABLE] * len(leaves)
  else:
    label_leaves, label_def = jax.tree.flatten(labels)
    if label_def != treedef:
      raise ValueError(
          "param_counts: `labels` must have the same pytree structure as `params` "
          f"({label_def.num_leaves} vs {treedef.num_leaves} leaves); build it with research.masking.")
    bad = sorted({str(l) for l in label_leaves if l not in (TRAINABLE, FROZEN)})
    if bad:
      raise ValueError(f"param_counts: label leaves must be 'trainable' or 'frozen', got {bad}.")
  total = trainable = bytes_params = bytes_trainable = 0
  for x, label in zip(leaves, label_leaves):
    n, b = _leaf_size(x), _leaf_bytes(x)
    total += n
    bytes_params += b
    if label == TRAINABLE:
      trainable += n
      bytes_trainable += b
  return {"total": total, "trainable": trainable, "frozen": total - trainable,
          "bytes_params": bytes_params, "bytes_trainable": bytes_trainable}


def optimizer_state_bytes(opt_state: Any) -> int:
  """Bytes held by an optax state (moments, counters); masked-out parts hold nothing."""
  return sum(_leaf_bytes(x) for x in jax.tree.leaves(opt_state))


def peak_param_opt_bytes(params: Any, opt_state: Any, labels: Any = None) -> int:
  """Resident bytes at the optimizer update: params + gradients of trainable params + opt state.

  This is a lower bound on peak training memory: activations and XLA temporaries come on top and
  depend on batch size and sequence length.

  Args:
    params: pytree of arrays.
    opt_state: the optax state for the trainable params.
    labels: "trainable"/"frozen" pytree like `params`, or None (all trainable).

  Returns:
    bytes, as an int.
  """
  counts = param_counts(params, labels)
  return counts["bytes_params"] + counts["bytes_trainable"] + optimizer_state_bytes(opt_state)


def checkpoint_bytes(path: str | os.PathLike[str]) -> int:
  """Size on disk of a saved checkpoint (a file, or a directory counted recursively)."""
  path = os.fspath(path)
  if os.path.isfile(path):
    return os.path.getsize(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint_bytes: no file or directory at {path!r}; pass the saved "
                            "checkpoint's path.")
  total = 0
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      if not os.path.islink(full):
        total += os.path.getsize(full)
  return total


def _xla_flops(cost: Any) -> float:
  """Reads "flops" from `Compiled.cost_analysis()`: a dict (new jax) or a list of dicts (old)."""
  if cost is None:
    return 0.0
  if isinstance(cost, dict):
    cost = [cost]
  return float(sum(float(c.get("flops", 0.0)) for c in cost if c))


def step_flops(jitted_fn: Callable[..., Any], *args: Any,
               analytic: float | Callable[[], float] | None = None,
               ignore_loops: bool = False, **kwargs: Any) -> tuple[float, str]:
  """FLOPs of one call of a (jitted) function, from XLA's cost analysis of the compiled program.

  XLA's count covers dots, convolutions and elementwise ops of the optimized program. Caveats, for
  which the analytic count is preferred when given: a while loop (`lax.scan`, `fori_loop`, e.g.
  gradient accumulation) has its body counted once, not once per trip; and a program partitioned
  over N devices (sharded jit) reports one device's share.

  Args:
    jitted_fn: a `jax.jit`-wrapped function (a plain function is jitted here).
    *args: example arguments (arrays or ShapeDtypeStructs), as for `jitted_fn.lower`.
    analytic: fallback count (a number or a zero-argument callable, e.g. a partial of
      `analytic_encoder_flops`) used if XLA gives no count, a count of 0, or a loop it undercounts.
    ignore_loops: the caller knows its program's while loops are negligible (the PRNG's threefry
      loop that dropout brings in, with no `lax.scan` over model work): trust XLA's count anyway.
    **kwargs: keyword arguments for `lower`.

  Returns:
    (flops, source): source is "xla_cost_analysis" or "analytic"; ("nan", "unavailable") when
    neither is available (logged).
  """
  fn = jitted_fn if hasattr(jitted_fn, "lower") else jax.jit(jitted_fn)
  flops, has_loop = 0.0, False
  try:
    compiled = fn.lower(*args, **kwargs).compile()
    flops = _xla_flops(compiled.cost_analysis())
    has_loop = not ignore_loops and bool(re.search(r"\bwhile\(", compiled.as_text() or ""))
  except Exception as e:  # backends without cost analysis raise various errors
    logging.warning("step_flops: XLA cost analysis unavailable (%s: %s).", type(e).__name__, e)
  if flops > 0 and not (has_loop and analytic is not None):
    if has_loop:
      logging.warning("step_flops: the program has a while loop whose body XLA counts once; pass "
                      "`analytic=` for a full count.")
    return flops, SOURCE_XLA
  if analytic is not None:
    return float(analytic() if callable(analytic) else analytic), SOURCE_ANALYTIC
  logging.warning("step_flops: no FLOP count (XLA gave none); pass `analytic=`.")
  return float("nan"), SOURCE_UNAVAILABLE


def _cfg_get(cfg: Any, name: str, default: Any = None) -> Any:
  if isinstance(cfg, dict):
    return cfg.get(name, default)
  return getattr(cfg, name, default)


def analytic_encoder_flops(cfg: Any, batch: int, seq_len: int, train: bool, *,
                           trainable_from_layer: int = 0, num_labels: int | None = None) -> float:
  """Analytic FLOPs of one BERT-encoder classifier step (an estimate, matmuls only).

  Forward, per layer, with T = batch·seq_len tokens, D hidden, F intermediate:
    dense matmuls 2·T·(4·D² + 2·D·F)  (q, k, v, out; mlp up, down) and
    attention 4·B·S²·D  (scores Q·Kᵀ and context P·V), plus the pooler 2·B·D² and head 2·B·D·C.
  Embedding lookups, softmax, layer norms, GELU and biases are ignored: against XLA's count of
  `EncoderClassifier` this is within ~3% at MiniLM size (D=384, S=128) and ~10% low at D=128.
  Training adds a backward pass ≈ 2× the forward of the part gradients flow through (activation and
  weight gradients): with masked fine-tuning the backward stops at the lowest trainable layer, so
  only layers >= `trainable_from_layer` (and pooler, head) are counted again. Full fine-tuning is
  ≈ 3× forward; head-only (`trainable_from_layer=num_layers`) ≈ forward + 2× head. Methods that
  train a few params inside every layer (bitfit, LoRA) need activation gradients through all layers:
  use `trainable_from_layer=0` (an overestimate: ≈ 1× not 2× backward for frozen weights).

  Args:
    cfg: encoder config (EncoderConfig or dict) with num_layers, hidden_size, intermediate_size and
      optionally num_labels and pooling.
    batch: B, examples per step.
    seq_len: S, padded sequence length.
    train: count a training step (forward + backward) instead of a forward pass.
    trainable_from_layer: index of the lowest layer that receives gradients (0 = all).
    num_labels: C, overrides cfg.num_labels (default 2).

  Returns:
    FLOPs (float).
  """
  L = int(_cfg_get(cfg, "num_layers"))
  D = int(_cfg_get(cfg, "hidden_size"))
  F = int(_cfg_get(cfg, "intermediate_size") or 4 * D)
  C = int(num_labels or _cfg_get(cfg, "num_labels", 2) or 2)
  if not 0 <= trainable_from_layer <= L:
    raise ValueError(f"analytic_encoder_flops: trainable_from_layer={trainable_from_layer} must be "
                     f"in [0, num_layers={L}].")
  B, S = batch, seq_len
  T = B * S
  per_layer = 2.0 * T * (4 * D * D + 2 * D * F) + 4.0 * B * S * S * D
  top = 2.0 * B * D * C + (2.0 * B * D * D if _cfg_get(cfg, "pooling", "mean") == "pooler" else 0.0)
  forward = L * per_layer + top
  if not train:
    return forward
  backward = 2.0 * ((L - trainable_from_layer) * per_layer + top)
  return forward + backward


def host_cpu_name() -> str:
  """The host CPU model (e.g. "AMD EPYC 7B13"), for naming CPU benchmarks; "" if unknown."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _percentile_ms(seconds: Sequence[float], q: float) -> float:
  return float(np.percentile(np.asarray(seconds) * 1e3, q))


def benchmark_latency(apply_fn: Callable[..., Any], make_batch: Callable[[int], Any], *,
                      params: Any = None, batch_sizes: Sequence[int] = (1, 64), warmup: int = 5,
                      iters: int = 50, backend: str | None = None) -> dict[str, Any]:
  """Times inference: per-call latency at each batch size and throughput at the largest.

  The function is jitted and compiled for each batch shape before timing; inputs (and `params`) are
  placed on the device first, so host-to-device copies are not timed. Each call is synchronised
  with `jax.block_until_ready`. A benchmark: report it, never assert on it.

  Args:
    apply_fn: `apply_fn(batch)` or, when `params` is given, `apply_fn(params, batch)`.
    make_batch: batch size -> batch (pytree of arrays, e.g. the model's input dict).
    params: optional params, passed explicitly so they live on the benchmarked device.
    batch_sizes: batch sizes to time; throughput is measured at the largest.
    warmup: untimed calls per batch size after compilation.
    iters: timed calls per batch size (use >= 50 for reported numbers).
    backend: "cpu", "gpu", ...; None = the default device (GPU if present, else CPU).

  Returns:
    dict: device (device kind, e.g. "cpu" or "NVIDIA H200"), backend, host_cpu (CPU model and
    core count; the device that ran a "cpu" benchmark), iters, warmup,
    batch_sizes, for each size b: batch{b}_p50_ms, batch{b}_p90_ms, batch{b}_mean_ms;
    throughput_batch_size and throughput_eps (examples/s at that size, from its median latency).
    batch1_p50_ms / batch1_p90_ms are present when 1 is among `batch_sizes`.
  """
  if iters < 1 or warmup < 0 or not batch_sizes or min(batch_sizes) < 1:
    raise ValueError("benchmark_latency: need iters >= 1, warmup >= 0 and positive batch_sizes, "
                     f"got iters={iters}, warmup={warmup}, batch_sizes={tuple(batch_sizes)}.")
  device = jax.devices(backend)[0]
  fn = apply_fn if hasattr(apply_fn, "lower") else jax.jit(apply_fn)
  dev_params = None if params is None else jax.device_put(params, device)
  out: dict[str, Any] = {"device": device.device_kind, "backend": device.platform,
                         "host_cpu": f"{host_cpu_name()}, {os.cpu_count()} cores", "iters": iters, "warmup": warmup, "batch_sizes": list(batch_sizes)}
  for b in batch_sizes:
    batch = jax.device_put(make_batch(b), device)
    call_args = (batch,) if dev_params is None else (dev_params, batch)
    compiled = fn.lower(*call_args).compile()
    for _ in range(warmup):
      jax.block_until_ready(compiled(*call_args))
    times = []
    for _ in range(iters):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(*call_args))
      times.append(time.perf_counter() - t0)
    out[f"batch{b}_p50_ms"] = _percentile_ms(times, 50)
    out[f"batch{b}_p90_ms"] = _percentile_ms(times, 90)
    out[f"batch{b}_mean_ms"] = float(np.mean(times) * 1e3)
  top = max(batch_sizes)
  out["throughput_batch_size"] = top
  out["throughput_eps"] = top / (out[f"batch{top}_p50_ms"] / 1e3)
  return out
