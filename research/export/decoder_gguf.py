"""Decoder students -> GGUF (llama.cpp), and the check that our importer reads them back.

A student is a decoder run's best params (`store.load_run_params`) or a model source cut to some
of its layers (the llama family's `slice_layers`). `export` writes it with
`checkpoints.gguf.save_gguf`, copying the tokenizer metadata (vocab, merges, chat template,
special ids) from a template GGUF, by default the source the run or model came from, so llama.cpp
can tokenize and chat with the file. `round_trip` reloads the file with `checkpoints.gguf.load_gguf`
and compares logits. Needs only the core `gguf` package.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import numpy as np

from research.checkpoints import gguf as gguf_ckpt

Params = dict[str, Any]


def gguf_template(source: Any) -> pathlib.Path | None:
  """The .gguf file of a model source, or None when it is not a GGUF (e.g. an HF folder)."""
  if not source:
    return None
  try:
    return gguf_ckpt.resolve_gguf(source)
  except FileNotFoundError:
    return None


def load_student(*, run_dir: str | None = None, source: str | None = None,
                 layers: Sequence[int] = ()) -> tuple[Params, Any, Any]:
  """(params, DecoderConfig, the model source it came from), optionally cut to `layers`.

  Args:
    run_dir: a decoder run directory (its best params, LoRA merged), or
    source: a model source (GGUF path / known name / HF folder) for the llama family.
    layers: keep these layers (renumbered 0..), as a layer-copied student starts.
  """
  from research.models import registry  # pylint: disable=g-import-not-at-top
  if (run_dir is None) == (source is None):
    raise ValueError("load_student: pass exactly one of run_dir or source.")
  if run_dir is not None:
    from research.checkpoints import store  # pylint: disable=g-import-not-at-top
    from research.train import workdir  # pylint: disable=g-import-not-at-top
    params, cfg = store.load_run_params(run_dir)
    saved = workdir.saved_config(os.fspath(run_dir)) or {}
    origin = saved.get("model", {}).get("source")
  else:
    _, params, cfg = registry.build_model("llama", source, num_labels=0)
    params = _numpy(params)
    origin = source
  if not hasattr(cfg, "num_kv_heads"):
    raise ValueError(f"{run_dir or source}: a {type(cfg).__name__} model, not a decoder; GGUF "
                     "export is for the llama family (encoders export to ONNX).")
  if layers:
    params, cfg = registry.get_family("llama").slice_layers(params, cfg, layers)
  return params, cfg, origin


def _numpy(params: Params) -> Params:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)


def export(params: Params, cfg: Any, path: str | os.PathLike[str], *, qtype: str = "F32",
           template: Any = None, name: str = "research-decoder-student") -> pathlib.Path:
  """Writes a GGUF; `template`: a GGUF source whose tokenizer.* metadata is copied."""
  tpl = gguf_template(template) if template is not None else None
  if template is not None and tpl is None:
    raise FileNotFoundError(f"tokenizer template {template!r} is not a GGUF file or known name.")
  return gguf_ckpt.save_gguf(_numpy(params), cfg.replace(dtype="float32"), path, qtype=qtype,
                             template=tpl, name=name)


def logits(params: Params, cfg: Any, ids: np.ndarray) -> np.ndarray:
  """f32 next-token logits B×L×V of `ids` (all positions)."""
  from research.models import decoder  # pylint: disable=g-import-not-at-top
  out = decoder.Decoder(cfg.replace(dtype="float32")).apply({"params": params}, np.asarray(ids))
  return np.asarray(out["logits"], np.float32)


def round_trip(params: Params, cfg: Any, path: str | os.PathLike[str],
               ids: np.ndarray) -> dict[str, Any]:
  """Reloads `path` with our importer; compares its config shape and logits with (params, cfg)."""
  cfg2, params2 = gguf_ckpt.load_gguf(path)
  fields = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
            "intermediate_size", "tie_word_embeddings", "attention_bias", "arch")
  changed = {f: (getattr(cfg, f), getattr(cfg2, f)) for f in fields
             if getattr(cfg, f) != getattr(cfg2, f)}
  diff = float(np.abs(logits(params2, cfg2, ids) - logits(params, cfg, ids)).max())
  return {"max_abs_logit_diff": diff, "config_changes": changed, "num_layers": cfg2.num_layers,
          "file_mb": pathlib.Path(path).stat().st_size / 1e6}


def check_tokenizer(path: str | os.PathLike[str], template: Any,
                    texts: Sequence[str]) -> tuple[bool, list[list[int]]]:
  """(whether the exported file tokenizes `texts` as its template does, the file's ids)."""
  from research.checkpoints import gguf_tokenizer  # pylint: disable=g-import-not-at-top
  ids = gguf_tokenizer.load_tokenizer(path).encode_batch(list(texts))
  return ids == gguf_tokenizer.load_tokenizer(gguf_template(template)).encode_batch(
      list(texts)), ids
