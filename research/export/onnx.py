"""Encoder classifiers -> ONNX (jax2onnx), run in ONNX Runtime in f32 and dynamic int8.

The exported graph takes `input_ids`, `attention_mask`, `token_type_ids` (int32 B×L) and returns
`logits` (f32 B×C). The batch B is dynamic; the width L is fixed at export: the encoder's position
lookup (`arange(L)`) and its max-length check do not trace with a symbolic L in jax2onnx 0.17.1.
Narrower batches are right-padded to L with attention_mask 0 (`pad_batch`), which leaves the
logits unchanged (padded keys are masked, mean pooling skips them).

Needs the `export` extra (README): jax2onnx (installed with --no-deps), onnx, onnx-ir, onnxruntime.
They are imported inside the functions, so this module imports without them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import time
from typing import Any, Iterable, Mapping

import numpy as np

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
INSTALL = ("pip install --no-deps jax2onnx==0.17.1 && pip install onnx onnx-ir onnxruntime "
           "(jax2onnx pins an older orbax-checkpoint, hence --no-deps)")


def require() -> None:
  """Raises ImportError naming the install command when the export extra is missing."""
  missing = []
  for mod in ("jax2onnx", "onnx", "onnx_ir", "onnxruntime"):
    try:
      __import__(mod)
    except ImportError:
      missing.append(mod)
  if missing:
    raise ImportError(f"ONNX export needs {', '.join(missing)}: {INSTALL}.")


@contextlib.contextmanager
def _quiet(*loggers: str):
  """Raises the named loggers to ERROR for the block (export-time chatter, not problems)."""
  saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
  for log, _ in saved:
    log.setLevel(logging.ERROR)
  try:
    yield
  finally:
    for log, level in saved:
      log.setLevel(level)


def versions() -> dict[str, str]:
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  return {d: importlib.metadata.version(d) for d in ("jax2onnx", "onnx", "onnxruntime")}


def export_classifier(params: Mapping[str, Any], cfg: Any, path: str | os.PathLike[str], *,
                      seq_len: int) -> pathlib.Path:
  """Writes the EncoderClassifier `(params, cfg)` as an ONNX file with inputs of width `seq_len`.

  The params are baked in as initializers; the graph computes in f32 whatever `cfg.dtype` says
  (ORT's CPU kernels have no bf16 matmul path worth exporting to).
  """
  require()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import jax2onnx  # pylint: disable=g-import-not-at-top
  import onnx  # pylint: disable=g-import-not-at-top
  from research.models import encoder  # pylint: disable=g-import-not-at-top
  if seq_len > cfg.max_position_embeddings:
    raise ValueError(f"seq_len={seq_len} exceeds max_position_embeddings="
                     f"{cfg.max_position_embeddings}.")
  module = encoder.EncoderClassifier(cfg.replace(dtype="float32"))
  p = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)

  def logits(input_ids, attention_mask, token_type_ids):
    return module.apply({"params": p}, input_ids, attention_mask, token_type_ids,
                        deterministic=True)["logits"]

  batch = jax.export.symbolic_shape("B")[0]
  spec = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
  # Chatter, not problems: jax2onnx logs a traceback per example plugin whose deps (equinox, ...)
  # are absent; onnx_ir warns per shape constant it serializes untyped (ORT checks the graph).
  with _quiet("jax2onnx.plugins.plugin_system", "onnx_ir.serde"):
    proto = jax2onnx.to_onnx(logits, [spec] * 3, model_name="encoder_classifier",
                             input_names=list(INPUTS), output_names=["logits"])
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  onnx.save(proto, str(path))
  return path


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                  per_channel: bool = True) -> pathlib.Path:
  """ORT dynamic quantization: int8 weights of MatMul / Gather, activations quantized per call.

  Per-channel weight scales: on the PhraseBank teacher and student they cut the largest logit
  error against f32 2-4× (per-tensor: 2.2-2.8) at the same speed and size.
  """
  require()
  from onnxruntime import quantization  # pylint: disable=g-import-not-at-top
  dst = pathlib.Path(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  with _quiet(""):  # root: "consider pre-processing" (shape inference; ORT optimizes at load)
    quantization.quantize_dynamic(str(src), str(dst), per_channel=per_channel,
                                  weight_type=quantization.QuantType.QInt8)
  return dst


def session(path: str | os.PathLike[str], *, threads: int = 0, spin: bool = False) -> Any:
  """A CPU InferenceSession; threads=0 lets ORT pick (one per physical core).

  spin=False: idle pool threads sleep instead of busy-waiting. On the shared 2-core VM ORT's
  default spinning made batch-1 calls ~2× slower (its threads fight the other processes);
  a dedicated edge device may prefer spin=True.
  """
  require()
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  opts = ort.SessionOptions()
  opts.intra_op_num_threads = threads
  opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
  opts.log_severity_level = 3
  return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def input_width(sess: Any) -> int:
  """The fixed sequence width L the session's model was exported with."""
  return int(sess.get_inputs()[0].shape[1])


def pad_batch(batch: Mapping[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
  """The model inputs of `batch` right-padded (mask 0) to `width` columns, as int32."""
  out = {}
  for k in INPUTS:
    x = np.asarray(batch[k], np.int32)
    if x.shape[1] > width:
      raise ValueError(f"batch width {x.shape[1]} exceeds the exported width {width}.")
    out[k] = np.pad(x, ((0, 0), (0, width - x.shape[1])))
  return out


def logits(sess: Any, batch: Mapping[str, np.ndarray]) -> np.ndarray:
  """f32 B×C logits of one batch (padded to the exported width)."""
  return sess.run(["logits"], pad_batch(batch, input_width(sess)))[0]


def predict(sess: Any, batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Logits and split positions of the real rows (valid > 0) of every batch, concatenated."""
  out, index = [], []
  for b in batches:
    keep = np.asarray(b["valid"]) > 0
    out.append(logits(sess, b)[keep])
    index.append(np.asarray(b["index"])[keep])
  return {"logits": np.concatenate(out), "index": np.concatenate(index)}


def _time_ms(sess: Any, feed: dict[str, np.ndarray], iters: int, warmup: int) -> list[float]:
  for _ in range(warmup):
    sess.run(["logits"], feed)
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    sess.run(["logits"], feed)
    times.append((time.perf_counter() - t0) * 1e3)
  return times


def benchmark(sess: Any, *, iters: int = 50, warmup: int = 5, throughput_batch: int = 32,
              throughput_iters: int = 10, token: int = 1000) -> dict[str, Any]:
  """Batch-1 latency and batch-`throughput_batch` throughput at the exported width.

  Inputs as research/latency.py times the JAX model (`token` everywhere, full mask), so the two
  are comparable at the same width. A benchmark: report it, never assert on it.
  """
  width = input_width(sess)
  feed = lambda b: {"input_ids": np.full((b, width), token, np.int32),
                    "attention_mask": np.ones((b, width), np.int32),
                    "token_type_ids": np.zeros((b, width), np.int32)}
  one = _time_ms(sess, feed(1), iters, warmup)
  big = _time_ms(sess, feed(throughput_batch), throughput_iters, 2)
  big_p50 = float(np.percentile(big, 50))
  return {"batch1_p50_ms": float(np.percentile(one, 50)),
          "batch1_p90_ms": float(np.percentile(one, 90)),
          f"batch{throughput_batch}_p50_ms": big_p50,
          "throughput_batch_size": throughput_batch,
          "throughput_eps": throughput_batch / (big_p50 / 1e3),
          "seq_len": width, "iters": iters, "warmup": warmup,
          "throughput_iters": throughput_iters}
