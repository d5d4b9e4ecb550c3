"""BERT-family encoder (post-LN transformer, as HF `BertModel`) in flax.linen.

Params are always float32; `cfg.dtype` sets the compute dtype of the matmuls. In the bfloat16 path
the matmul inputs are cast to bfloat16 and accumulated in float32 (`preferred_element_type`); the
residual stream, softmax, layer norms, GELU and logits stay float32, so every module output is f32.

Param naming follows docs/ARCHITECTURE.md (`encoder/layer_{i}/attn/query/kernel`, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import precision
from research.models.layout import Layout

Array = jax.Array

_POOLINGS = ("cls", "mean", "pooler")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf GELU, as HF BERT
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Shape and behaviour of a BERT-family encoder (+ classification head)."""
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  pad_token_id: int = 0
  num_labels: int = 2
  pooling: str = "mean"            # "cls" | "mean" | "pooler"
  dtype: str = "float32"           # compute dtype: "float32" | "bfloat16"
  hidden_dropout: float = 0.1      # embeddings, attention output, MLP output, classifier
  attention_dropout: float = 0.1   # attention probabilities
  initializer_range: float = 0.02

  def __post_init__(self):
    if self.pooling not in _POOLINGS:
      raise ValueError(f"EncoderConfig.pooling={self.pooling!r}; use one of {_POOLINGS}.")
    if self.dtype not in _DTYPES:
      raise ValueError(f"EncoderConfig.dtype={self.dtype!r}; use one of {tuple(_DTYPES)}.")
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"EncoderConfig.hidden_act={self.hidden_act!r}; "
                       f"supported: {tuple(_ACTIVATIONS)}.")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"EncoderConfig.hidden_size={self.hidden_size} is not divisible by "
                       f"num_heads={self.num_heads}.")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def compute_dtype(self) -> Any:
    return _DTYPES[self.dtype]

  def replace(self, **kw) -> "EncoderConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any], **kw) -> "EncoderConfig":
    """Builds a config from an HF BERT `config.json` dict; `kw` overrides fields."""
    pos_type = d.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
      raise ValueError(f"position_embedding_type={pos_type!r} is not supported; only 'absolute'.")
    num_labels = d.get("num_labels", len(d["id2label"]) if "id2label" in d else 2)
    fields = dict(
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=d["num_attention_heads"],
        intermediate_size=d["intermediate_size"],
        max_position_embeddings=d.get("max_position_embeddings", 512),
        type_vocab_size=d.get("type_vocab_size", 2),
        layer_norm_eps=d.get("layer_norm_eps", 1e-12),
        hidden_act=d.get("hidden_act", "gelu"),
        pad_token_id=d.get("pad_token_id", 0) or 0,
        num_labels=num_labels,
        hidden_dropout=d.get("hidden_dropout_prob", 0.1),
        attention_dropout=d.get("attention_probs_dropout_prob", 0.1),
        initializer_range=d.get("initializer_range", 0.02),
    )
    if d.get("pooling"):  # our exports name the classifier's pooling (checkpoints/hf.py)
      fields["pooling"] = d["pooling"]
    fields.update(kw)
    return cls(**fields)

  def to_hf_dict(self) -> dict[str, Any]:
    """HF `BertModel` config.json dict for this config."""
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "intermediate_size": self.intermediate_size,
        "max_position_embeddings": self.max_position_embeddings,
        "type_vocab_size": self.type_vocab_size,
        "layer_norm_eps": self.layer_norm_eps,
        "hidden_act": self.hidden_act,
        "pad_token_id": self.pad_token_id,
        "hidden_dropout_prob": self.hidden_dropout,
        "attention_probs_dropout_prob": self.attention_dropout,
        "initializer_range": self.initializer_range,
        "position_embedding_type": "absolute",
        "num_labels": self.num_labels,
    }


class Dense(nn.Module):
  """Dense layer with f32 params (kernel in×out), compute in `dtype`, f32 output."""
  features: int
  dtype: Any = jnp.float32
  init_std: float = 0.02

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", nn.initializers.normal(self.init_std),
                        (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return precision.matmul(x, kernel, self.dtype) + bias


def _layer_norm(cfg: EncoderConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.float32,
                      name=name)


class Embeddings(nn.Module):
  """Word + position + token type embeddings, LayerNorm, dropout."""
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, input_ids_BxL: Array, token_type_ids_BxL: Array,
               deterministic: bool) -> Array:
    cfg = self.cfg
    init = nn.initializers.normal(cfg.initializer_range)
    embed = lambda n, name: nn.Embed(n, cfg.hidden_size, embedding_init=init,
                                     param_dtype=jnp.float32, dtype=jnp.float32, name=name)
    seq_len = input_ids_BxL.shape[1]
    if seq_len > cfg.max_position_embeddings:
      raise ValueError(f"Sequence length {seq_len} exceeds max_position_embeddings="
                       f"{cfg.max_position_embeddings}; truncate inputs to that length.")
    pos_1xL = jnp.arange(seq_len)[None]
    h_BxLxD = (embed(cfg.vocab_size, "word")(input_ids_BxL)
               + embed(cfg.max_position_embeddings, "position")(pos_1xL)
               + embed(cfg.type_vocab_size, "token_type")(token_type_ids_BxL))
    h_BxLxD = _layer_norm(cfg, "ln")(h_BxLxD)
    return nn.Dropout(cfg.hidden_dropout)(h_BxLxD, deterministic=deterministic)


class SelfAttention(nn.Module):
  """Multi-head self-attention; returns (output B×L×D before residual, probs B×H×L×L)."""
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, h_BxLxD: Array, bias_Bx1x1xL: Array,
               deterministic: bool) -> tuple[Array, Array]:
    cfg = self.cfg
    dt = cfg.compute_dtype
    dense = lambda name: Dense(cfg.hidden_size, dt, cfg.initializer_range, name=name)
    B, L, _ = h_BxLxD.shape
    # Heads moved ahead of the sequence (B×H×L×K): batched dots with leading batch dims ran
    # 1.5-2x faster on XLA:CPU than contracting the B×L×H×K layout in place.
    split = lambda x: x.reshape(B, L, cfg.num_heads, cfg.head_dim).transpose(0, 2, 1, 3).astype(dt)
    q_BxHxLxK = split(dense("query")(h_BxLxD))
    k_BxHxLxK = split(dense("key")(h_BxLxD))
    v_BxHxLxK = split(dense("value")(h_BxLxD))
    scores_BxHxLxL = jnp.einsum("bhqk,bhsk->bhqs", q_BxHxLxK, k_BxHxLxK,
                                preferred_element_type=jnp.float32)
    scores_BxHxLxL = scores_BxHxLxL * (cfg.head_dim ** -0.5) + bias_Bx1x1xL
    probs_BxHxLxL = jax.nn.softmax(scores_BxHxLxL, axis=-1)
    dropped = nn.Dropout(cfg.attention_dropout)(probs_BxHxLxL, deterministic=deterministic)
    ctx_BxHxLxK = jnp.einsum("bhqs,bhsk->bhqk", dropped.astype(dt), v_BxHxLxK,
                             preferred_element_type=jnp.float32)
    ctx_BxLxHxK = ctx_BxHxLxK.transpose(0, 2, 1, 3)
    out_BxLxD = dense("out")(ctx_BxLxHxK.reshape(B, L, cfg.hidden_size))
    return out_BxLxD, probs_BxHxLxL


class Mlp(nn.Module):
  """up -> activation -> down."""
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, h_BxLxD: Array) -> Array:
    cfg = self.cfg
    dt = cfg.compute_dtype
    u_BxLxF = Dense(cfg.intermediate_size, dt, cfg.initializer_range, name="up")(h_BxLxD)
    u_BxLxF = _ACTIVATIONS[cfg.hidden_act](u_BxLxF)
    return Dense(cfg.hidden_size, dt, cfg.initializer_range, name="down")(u_BxLxF)


class Layer(nn.Module):
  """Post-LN transformer layer: h = LN(h + attn(h)); h = LN(h + mlp(h))."""
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, h_BxLxD: Array, bias_Bx1x1xL: Array,
               deterministic: bool) -> tuple[Array, Array]:
    cfg = self.cfg
    drop = lambda x: nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
    a_BxLxD, probs = SelfAttention(cfg, name="attn")(h_BxLxD, bias_Bx1x1xL, deterministic)
    h_BxLxD = _layer_norm(cfg, "attn_ln")(h_BxLxD + drop(a_BxLxD))
    m_BxLxD = Mlp(cfg, name="mlp")(h_BxLxD)
    h_BxLxD = _layer_norm(cfg, "mlp_ln")(h_BxLxD + drop(m_BxLxD))
    return h_BxLxD, probs


class Encoder(nn.Module):
  """BERT encoder. Returns a dict (see `__call__`)."""
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               token_type_ids: Array | None = None, *, deterministic: bool = True,
               output_hidden_states: bool = False,
               output_attentions: bool = False) -> dict[str, Any]:
    """Runs the encoder.

    Args:
      input_ids: int B×L token ids.
      attention_mask: int B×L, 1 for real tokens, 0 for padding (default: all ones).
      token_type_ids: int B×L segment ids (default: zeros).
      deterministic: disables dropout; pass `rngs={"dropout": key}` when False.
      output_hidden_states: also return the L+1 hidden states (embeddings output first).
      output_attentions: also return the per-layer softmax probabilities.

    Returns:
      dict with "last_hidden_state" f32 B×L×D, "pooler_output" f32 B×D (tanh(dense(CLS)), as
      HF; XLA drops it when unused) and, when asked, "hidden_states" (tuple of L+1 f32 B×L×D)
      and "attentions" (tuple of num_layers f32 B×H×L×L).
    """
    cfg = self.cfg
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    # Padding keys get the most negative f32, added in f32 (fully padded rows stay finite).
    neg = jnp.finfo(jnp.float32).min
    bias_Bx1x1xL = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, neg).astype(jnp.float32)

    h_BxLxD = Embeddings(cfg, name="embeddings")(input_ids, token_type_ids, deterministic)
    hidden_states, attentions = [h_BxLxD], []
    for i in range(cfg.num_layers):
      h_BxLxD, probs = Layer(cfg, name=f"layer_{i}")(h_BxLxD, bias_Bx1x1xL, deterministic)
      hidden_states.append(h_BxLxD)
      attentions.append(probs)
    pooled_BxD = jnp.tanh(Dense(cfg.hidden_size, cfg.compute_dtype, cfg.initializer_range,
                                name="pooler")(h_BxLxD[:, 0]))
    out = {"last_hidden_state": h_BxLxD, "pooler_output": pooled_BxD}
    if output_hidden_states:
      out["hidden_states"] = tuple(hidden_states)
    if output_attentions:
      out["attentions"] = tuple(attentions)
    return out


def mean_pool(h_BxLxD: Array, attention_mask_BxL: Array) -> Array:
  """Mean over non-padding positions (as sentence-transformers), f32 B×D."""
  m_BxLx1 = attention_mask_BxL[..., None].astype(jnp.float32)
  total_BxD = jnp.sum(h_BxLxD.astype(jnp.float32) * m_BxLx1, axis=1)
  return total_BxD / jnp.maximum(jnp.sum(m_BxLx1, axis=1), 1e-9)


class EncoderClassifier(nn.Module):
  """Encoder + pooling + dropout + linear head (`head`), logits f32."""
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               token_type_ids: Array | None = None, *, deterministic: bool = True,
               output_hidden_states: bool = False,
               output_attentions: bool = False) -> dict[str, Any]:
    """Same arguments as `Encoder`; adds "pooled" f32 B×D and "logits" f32 B×C."""
    cfg = self.cfg
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    out = Encoder(cfg, name="encoder")(
        input_ids, attention_mask, token_type_ids, deterministic=deterministic,
        output_hidden_states=output_hidden_states, output_attentions=output_attentions)
    if cfg.pooling == "cls":
      pooled_BxD = out["last_hidden_state"][:, 0]
    elif cfg.pooling == "mean":
      pooled_BxD = mean_pool(out["last_hidden_state"], attention_mask)
    else:
      pooled_BxD = out["pooler_output"]
    x_BxD = nn.Dropout(cfg.hidden_dropout)(pooled_BxD, deterministic=deterministic)
    logits_BxC = Dense(cfg.num_labels, jnp.float32, cfg.initializer_range, name="head")(x_BxD)
    return {**out, "pooled": pooled_BxD, "logits": logits_BxC}


# ---------------------------------------------------------------------------------------------
# The family interface (research/models/registry.py).


def layout(pooling: str = "mean") -> Layout:
  """BERT's parameter layout; with pooling="pooler" the pooler dense is part of the head."""
  return Layout(layer=r"^encoder/layer_(\d+)/",
                head=r"^(head|encoder/pooler)/" if pooling == "pooler" else r"^head/",
                norm=r"(^|/)[^/]*ln/(scale|bias)$", embedding=r"^encoder/embeddings/",
                layer_format="encoder/layer_{i}")


def apply(module: nn.Module, params: Any, batch: Mapping[str, Any], *, deterministic: bool,
          rng: Array | None = None, outputs: Sequence[str] = ()) -> dict:
  """The family's model call on a batch dict (input_ids, attention_mask, token_type_ids)."""
  rngs = None if deterministic else {"dropout": rng}
  return module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                      batch["token_type_ids"], deterministic=deterministic,
                      output_hidden_states="hidden_states" in outputs,
                      output_attentions="attentions" in outputs, rngs=rngs)


def shape_key(model: Mapping[str, Any]) -> str:
  """Identifies a classifier's shape: what its latency depends on."""
  return "L{num_layers}-D{hidden_size}-H{num_heads}-F{intermediate_size}-C{num_labels}".format(
      **model)
