"""HF Llama / Qwen2 folders (config.json + model.safetensors) <-> decoder params.

`decoder_from_hf` / `decoder_to_hf` have the registry's `from_hf` / `to_hf` signatures; folders are
read and written with `research.checkpoints.hf` (`read_config`, `read_tensors`) or the helpers
below. HF dense weights are (out, in); ours are (in, out).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

import numpy as np

from research.checkpoints import hf
from research.models.decoder import DecoderConfig

Params = dict[str, Any]

_LAYER = {  # our path under layer_N -> HF name under model.layers.N
    ("attn_norm", "scale"): "input_layernorm.weight",
    ("attn", "q", "kernel"): "self_attn.q_proj.weight",
    ("attn", "q", "bias"): "self_attn.q_proj.bias",
    ("attn", "k", "kernel"): "self_attn.k_proj.weight",
    ("attn", "k", "bias"): "self_attn.k_proj.bias",
    ("attn", "v", "kernel"): "self_attn.v_proj.weight",
    ("attn", "v", "bias"): "self_attn.v_proj.bias",
    ("attn", "o", "kernel"): "self_attn.o_proj.weight",
    ("mlp_norm", "scale"): "post_attention_layernorm.weight",
    ("mlp", "gate", "kernel"): "mlp.gate_proj.weight",
    ("mlp", "up", "kernel"): "mlp.up_proj.weight",
    ("mlp", "down", "kernel"): "mlp.down_proj.weight",
}


def _names(cfg: DecoderConfig) -> list[tuple[tuple[str, ...], str, tuple[int, ...]]]:
  """(our path, HF name, our shape) for every param of `cfg`."""
  D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  qo, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  shapes = {"q": (D, qo), "k": (D, kv), "v": (D, kv), "o": (qo, D), "gate": (D, F), "up": (D, F),
            "down": (F, D)}
  names = [(("decoder", "embed", "embedding"), "model.embed_tokens.weight", (V, D))]
  for i in range(cfg.num_layers):
    for sub, name in _LAYER.items():
      if sub[-1] == "bias" and not cfg.attention_bias:
        continue
      shape = ((D,) if sub[0].endswith("norm") else shapes[sub[1]] if sub[-1] == "kernel"
               else (shapes[sub[1]][1],))
      names.append((("decoder", f"layer_{i}") + sub, f"model.layers.{i}.{name}", shape))
  names.append((("decoder", "final_norm", "scale"), "model.norm.weight", (D,)))
  if not cfg.tie_word_embeddings:
    names.append((("lm_head", "kernel"), "lm_head.weight", (D, V)))
  return names




def decoder_from_hf(config: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                    file: pathlib.Path | str = "<tensors>") -> tuple[DecoderConfig, Params]:
  """Converts HF LlamaForCausalLM / Qwen2ForCausalLM tensors to (cfg, numpy f32 params).

  Raises:
    ValueError: a tensor is missing or has a shape that does not match config.json.
  """
  cfg = DecoderConfig.from_hf_dict(config)
  params: Params = {}
  for path, name, shape in _names(cfg):
    if name not in tensors:
      raise ValueError(f"{file}: tensor {name!r} is missing (config.json says {cfg.num_layers} "
                       f"layers, tie_word_embeddings={cfg.tie_word_embeddings}).")
    value = np.asarray(tensors[name], np.float32)
    transpose = path[-1] == "kernel"
    if value.shape != (shape[::-1] if transpose else shape):
      raise ValueError(f"{file}: tensor {name!r} has shape {tuple(value.shape)}, expected "
                       f"{shape[::-1] if transpose else shape} from config.json.")
    hf.set_path(params, path, np.ascontiguousarray(value.T if transpose else value))
  return cfg, params


def decoder_to_hf(params: Mapping[str, Any], cfg: DecoderConfig
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Converts (params, cfg) to (config.json dict, HF tensors); inverse of `decoder_from_hf`."""
  tensors = {}
  for path, name, _ in _names(cfg):
    value = np.asarray(hf.get_path(params, path), np.float32)
    tensors[name] = np.ascontiguousarray(value.T if path[-1] == "kernel" else value)
  return cfg.to_hf_dict(), tensors


def read_tensors(folder: pathlib.Path) -> tuple[dict[str, np.ndarray], pathlib.Path]:
  """`hf.read_tensors`, plus sharded folders (model.safetensors.index.json + shards)."""
  index = pathlib.Path(folder) / "model.safetensors.index.json"
  if (pathlib.Path(folder) / "model.safetensors").is_file() or not index.is_file():
    return hf.read_tensors(folder)
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  tensors = {}
  for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
    tensors.update(load_file(str(pathlib.Path(folder) / shard)))
  return tensors, index


def load_hf_decoder(folder: str | os.PathLike[str]) -> tuple[DecoderConfig, Params]:
  """Reads an HF decoder folder (or any `hf.resolve_source` source) as (cfg, params)."""
  folder = hf.resolve_source(folder)
  tensors, file = read_tensors(folder)
  return decoder_from_hf(hf.read_config(folder), tensors, file)


def save_hf_decoder(params: Mapping[str, Any], cfg: DecoderConfig,
                    out_dir: str | os.PathLike[str]) -> pathlib.Path:
  """Writes out_dir/{config.json, model.safetensors} (transformers-loadable); returns out_dir."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  config, tensors = decoder_to_hf(params, cfg)
  save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
  (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  return out
