"""Llama / Qwen2 decoder (pre-RMSNorm, RoPE, grouped-query attention, SwiGLU) in flax.linen.

Params are always float32; `cfg.dtype` sets the compute dtype of the matmuls (f32 accumulation).
The residual stream, RMSNorm, RoPE, softmax and logits stay float32. Qwen2 is Llama plus biases on
q/k/v (`attention_bias`).

Params layout (mask rules read it; '/'-joined paths, see `layer_paths`):

  {"decoder": {"embed": {"embedding": V×D},
               "layer_{i}": {"attn_norm": {"scale": D},
                             "attn": {"q": {"kernel": D×(H·hd), "bias"?}, "k": {...}, "v": {...},
                                      "o": {"kernel": (H·hd)×D}},
                             "mlp_norm": {"scale": D},
                             "mlp": {"gate": {"kernel": D×F}, "up": {...},
                                     "down": {"kernel": F×D}}},
               "final_norm": {"scale": D}},
   "lm_head": {"kernel": D×V}}   # only when not tie_word_embeddings

KV cache (`init_cache`): {"layer_{i}": {"k", "v": B×S×KV×hd}, "mask": int32 B×S (1 = a real token
was written to that slot), "index": int32 () next slot to write, "positions": int32 B (real tokens
seen per row = next RoPE position)}. Every row writes the same slots (prompts are left padded), so
one `index` serves the batch.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import precision

Array = jax.Array
Params = dict[str, Any]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_ARCHS = ("llama", "qwen2")
_ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Shape and behaviour of a Llama-family causal LM. Defaults: SmolLM2-135M."""
  vocab_size: int = 49152
  hidden_size: int = 576
  num_layers: int = 30
  num_heads: int = 9
  num_kv_heads: int = 3
  head_dim: int = 64
  intermediate_size: int = 1536
  rope_theta: float = 100000.0
  rms_norm_eps: float = 1e-5
  max_position_embeddings: int = 8192
  tie_word_embeddings: bool = True
  attention_bias: bool = False     # q/k/v biases (Qwen2)
  dtype: str = "float32"           # compute dtype: "float32" | "bfloat16"
  arch: str = "llama"              # "llama" | "qwen2" (HF model_type)
  # HF rope_scaling as sorted (key, value) pairs (hashable); () = plain RoPE.
  rope_scaling: tuple[tuple[str, Any], ...] = ()
  initializer_range: float = 0.02
  bos_token_id: int | None = 1
  eos_token_id: int | None = 2
  pad_token_id: int | None = None

  def __post_init__(self):
    # From JSON (a run's record) the pairs arrive as lists; jit needs the config hashable.
    object.__setattr__(self, "rope_scaling", tuple(tuple(p) for p in self.rope_scaling))
    if self.dtype not in _DTYPES:
      raise ValueError(f"DecoderConfig.dtype={self.dtype!r}; use one of {tuple(_DTYPES)}.")
    if self.arch not in _ARCHS:
      raise ValueError(f"DecoderConfig.arch={self.arch!r}; use one of {_ARCHS}.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"DecoderConfig.num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}.")
    if self.head_dim % 2:
      raise ValueError(f"DecoderConfig.head_dim={self.head_dim} must be even (RoPE).")
    rope_type = dict(self.rope_scaling).get("rope_type", "default")
    if rope_type not in _ROPE_TYPES:
      raise ValueError(f"rope_scaling type {rope_type!r} is not supported; use one of "
                       f"{_ROPE_TYPES}.")

  @property
  def compute_dtype(self) -> Any:
    return _DTYPES[self.dtype]

  def replace(self, **kw) -> "DecoderConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any], **kw) -> "DecoderConfig":
    """Builds a config from an HF Llama/Qwen2 `config.json` dict; `kw` overrides fields."""
    arch = d.get("model_type", "llama")
    if arch not in _ARCHS:
      raise ValueError(f"model_type={arch!r} is not a decoder this family reads; use {_ARCHS}.")
    if d.get("hidden_act", "silu") != "silu":
      raise ValueError(f"hidden_act={d['hidden_act']!r}; only 'silu' (SwiGLU) is supported.")
    if arch == "llama" and d.get("mlp_bias"):
      raise ValueError("mlp_bias=True is not supported.")
    heads = d["num_attention_heads"]
    # transformers 5 folds rope_theta/rope_scaling into "rope_parameters"; read both spellings.
    rope = {**(d.get("rope_parameters") or {}), **(d.get("rope_scaling") or {})}
    theta = d.get("rope_theta", rope.pop("rope_theta", 10000.0))
    rope.pop("rope_theta", None)
    if "type" in rope:
      rope["rope_type"] = rope.pop("type")
    if rope.get("rope_type", "default") == "default":
      rope = {}
    eos = d.get("eos_token_id")
    fields = dict(
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=d.get("head_dim") or d["hidden_size"] // heads,
        intermediate_size=d["intermediate_size"],
        rope_theta=float(theta),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        attention_bias=bool(d.get("attention_bias", arch == "qwen2")),
        arch=arch,
        rope_scaling=tuple(sorted(rope.items())),
        initializer_range=d.get("initializer_range", 0.02),
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
        pad_token_id=d.get("pad_token_id"),
    )
    fields.update(kw)
    return cls(**fields)

  def to_hf_dict(self) -> dict[str, Any]:
    """HF config.json dict (LlamaForCausalLM / Qwen2ForCausalLM)."""
    d = {
        "architectures": ["LlamaForCausalLM" if self.arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": self.arch,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "intermediate_size": self.intermediate_size,
        "hidden_act": "silu",
        "rope_theta": self.rope_theta,
        "rms_norm_eps": self.rms_norm_eps,
        "max_position_embeddings": self.max_position_embeddings,
        "tie_word_embeddings": self.tie_word_embeddings,
        "initializer_range": self.initializer_range,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": self.eos_token_id,
        "pad_token_id": self.pad_token_id,
        "rope_scaling": dict(self.rope_scaling) or None,
        "torch_dtype": "float32",
    }
    if self.arch == "llama":
      d.update(attention_bias=self.attention_bias, mlp_bias=False)
    elif not self.attention_bias:
      raise ValueError("Qwen2 checkpoints always have q/k/v biases; attention_bias=False cannot "
                       "be exported as model_type 'qwen2'.")
    return d


# ---------------------------------------------------------------------------------------------
# Pure helpers.

def rope_inv_freq(cfg: DecoderConfig) -> np.ndarray:
  """RoPE inverse frequencies (hd/2,), f32, with HF's "linear" / "llama3" scaling."""
  hd = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / hd))
  sc = dict(cfg.rope_scaling)
  kind = sc.get("rope_type", "default")
  if kind == "linear":
    inv = inv / sc["factor"]
  elif kind == "llama3":  # transformers' _compute_llama3_parameters
    factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
    old = sc["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    mid = (1 - smooth) * scaled / factor + smooth * scaled
    is_mid = (wavelen >= old / hi) & (wavelen <= old / lo)
    inv = np.where(is_mid, mid, scaled)
  return inv.astype(np.float32)


def apply_rope(x_BxLxNxK: Array, positions_BxL: Array, inv_freq_K2: Array) -> Array:
  """Rotates q or k (HF "rotate_half" layout: pairs are (i, i + hd/2)), in f32."""
  freqs_BxLxK2 = positions_BxL[..., None].astype(jnp.float32) * inv_freq_K2
  emb_BxLx1xK = jnp.concatenate([freqs_BxLxK2, freqs_BxLxK2], -1)[:, :, None, :]
  cos, sin = jnp.cos(emb_BxLx1xK), jnp.sin(emb_BxLx1xK)
  x = x_BxLxNxK.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x * cos + jnp.concatenate([-x2, x1], -1) * sin


def default_positions(attention_mask_BxL: Array, offset_B: Array | None = None) -> Array:
  """cumsum(mask) - 1 (+ tokens already cached), clipped at 0: left padding keeps positions 0.."""
  pos_BxL = jnp.cumsum(attention_mask_BxL.astype(jnp.int32), axis=1) - 1
  if offset_B is not None:
    pos_BxL = pos_BxL + offset_B[:, None]
  return jnp.maximum(pos_BxL, 0)


def init_cache(cfg: DecoderConfig, batch: int, max_len: int, dtype: Any = None) -> dict[str, Any]:
  """An empty dense KV cache for `batch` rows of up to `max_len` tokens (prompt + generated).

  k/v are stored in `dtype` (default the compute dtype). The caller keeps index + L <= max_len
  (an overflowing write is clamped by XLA, not reported).
  """
  dtype = cfg.compute_dtype if dtype is None else dtype
  kv = lambda: jnp.zeros((batch, max_len, cfg.num_kv_heads, cfg.head_dim), dtype)
  cache = {f"layer_{i}": {"k": kv(), "v": kv()} for i in range(cfg.num_layers)}
  cache.update(mask=jnp.zeros((batch, max_len), jnp.int32), index=jnp.zeros((), jnp.int32),
               positions=jnp.zeros((batch,), jnp.int32))
  return cache


# ---------------------------------------------------------------------------------------------
# Modules.

class Dense(nn.Module):
  """Dense layer, f32 params (kernel in×out), compute in `dtype`, f32 output."""
  features: int
  use_bias: bool = False
  dtype: Any = jnp.float32
  init_std: float = 0.02

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", nn.initializers.normal(self.init_std),
                        (x.shape[-1], self.features), jnp.float32)
    y = precision.matmul(x, kernel, self.dtype)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return y


class RMSNorm(nn.Module):
  """x / rms(x) * scale, in f32 (as HF LlamaRMSNorm)."""
  eps: float

  @nn.compact
  def __call__(self, x_BxLxD: Array) -> Array:
    scale = self.param("scale", nn.initializers.ones, (x_BxLxD.shape[-1],), jnp.float32)
    x = x_BxLxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return scale * x


class Attention(nn.Module):
  """Grouped-query self-attention with RoPE; reads/writes one layer's KV cache when given."""
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, h_BxLxD: Array, positions_BxL: Array, allowed_BxLxS: Array,
               kv_cache: dict[str, Array] | None, index: Array | None
               ) -> tuple[Array, dict[str, Array] | None]:
    cfg = self.cfg
    dt = cfg.compute_dtype
    B, L, _ = h_BxLxD.shape
    H, KV, K = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    G = H // KV
    dense = lambda n, name, bias: Dense(n, bias, dt, cfg.initializer_range, name=name)
    inv_freq = jnp.asarray(rope_inv_freq(cfg))
    q_BxLxHxK = dense(H * K, "q", cfg.attention_bias)(h_BxLxD).reshape(B, L, H, K)
    k_BxLxKVxK = dense(KV * K, "k", cfg.attention_bias)(h_BxLxD).reshape(B, L, KV, K)
    v_BxLxKVxK = dense(KV * K, "v", cfg.attention_bias)(h_BxLxD).reshape(B, L, KV, K)
    q_BxLxHxK = apply_rope(q_BxLxHxK, positions_BxL, inv_freq)
    k_BxLxKVxK = apply_rope(k_BxLxKVxK, positions_BxL, inv_freq)

    new_cache = None
    if kv_cache is not None:  # write this chunk at slots [index, index + L), attend to all S
      cdt = kv_cache["k"].dtype
      k_all = jax.lax.dynamic_update_slice(kv_cache["k"], k_BxLxKVxK.astype(cdt), (0, index, 0, 0))
      v_all = jax.lax.dynamic_update_slice(kv_cache["v"], v_BxLxKVxK.astype(cdt), (0, index, 0, 0))
      new_cache = {"k": k_all, "v": v_all}
      k_BxSxKVxK, v_BxSxKVxK = k_all, v_all
    else:
      k_BxSxKVxK, v_BxSxKVxK = k_BxLxKVxK, v_BxLxKVxK

    q_BxLxKVxGxK = q_BxLxHxK.reshape(B, L, KV, G, K).astype(dt)
    scores_BxKVxGxLxS = jnp.einsum("blngk,bsnk->bngls", q_BxLxKVxGxK, k_BxSxKVxK.astype(dt),
                                   preferred_element_type=jnp.float32) * (K ** -0.5)
    neg = jnp.finfo(jnp.float32).min  # finite: fully masked (pad) queries stay NaN-free
    scores_BxKVxGxLxS = jnp.where(allowed_BxLxS[:, None, None], scores_BxKVxGxLxS, neg)
    probs_BxKVxGxLxS = jax.nn.softmax(scores_BxKVxGxLxS, axis=-1)
    ctx_BxLxKVxGxK = jnp.einsum("bngls,bsnk->blngk", probs_BxKVxGxLxS.astype(dt),
                                v_BxSxKVxK.astype(dt), preferred_element_type=jnp.float32)
    out_BxLxD = dense(cfg.hidden_size, "o", False)(ctx_BxLxKVxGxK.reshape(B, L, H * K))
    return out_BxLxD, new_cache


class Mlp(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, h_BxLxD: Array) -> Array:
    cfg = self.cfg
    dense = lambda n, name: Dense(n, False, cfg.compute_dtype, cfg.initializer_range, name=name)
    g_BxLxF = dense(cfg.intermediate_size, "gate")(h_BxLxD)
    u_BxLxF = dense(cfg.intermediate_size, "up")(h_BxLxD)
    return dense(cfg.hidden_size, "down")(jax.nn.silu(g_BxLxF) * u_BxLxF)


class Layer(nn.Module):
  """Pre-norm block: h += attn(norm(h)); h += mlp(norm(h))."""
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, h_BxLxD, positions_BxL, allowed_BxLxS, kv_cache, index):
    cfg = self.cfg
    a_BxLxD, new_cache = Attention(cfg, name="attn")(
        RMSNorm(cfg.rms_norm_eps, name="attn_norm")(h_BxLxD), positions_BxL, allowed_BxLxS,
        kv_cache, index)
    h_BxLxD = h_BxLxD + a_BxLxD
    h_BxLxD = h_BxLxD + Mlp(cfg, name="mlp")(RMSNorm(cfg.rms_norm_eps, name="mlp_norm")(h_BxLxD))
    return h_BxLxD, new_cache


def _logit_rows(h_BxLxD: Array, last_only: bool, positions_BxA: Array | None) -> Array:
  """The hidden states that get logits: all, the last, or the given positions (B×A)."""
  if positions_BxA is not None:
    return jnp.take_along_axis(h_BxLxD, positions_BxA[..., None].astype(jnp.int32), axis=1)
  return h_BxLxD[:, -1:] if last_only else h_BxLxD


class DecoderStack(nn.Module):
  """Embedding, layers, final norm; the tied output projection (h @ embeddingᵀ) lives here."""
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, input_ids_BxL, attention_mask_BxL=None, positions_BxL=None, cache=None,
               last_logits_only=False, logit_positions_BxA=None):
    cfg = self.cfg
    L = input_ids_BxL.shape[1]
    if attention_mask_BxL is None:
      attention_mask_BxL = jnp.ones_like(input_ids_BxL)
    embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=jnp.float32, dtype=jnp.float32,
                     embedding_init=nn.initializers.normal(cfg.initializer_range), name="embed")
    mask_BxL = attention_mask_BxL.astype(jnp.int32)
    if cache is None:
      index = None
      key_mask_BxS, q_slot_L, S = mask_BxL, jnp.arange(L), L
      offset_B = None
    else:
      index = cache["index"]
      key_mask_BxS = jax.lax.dynamic_update_slice(cache["mask"], mask_BxL, (0, index))
      S = key_mask_BxS.shape[1]
      q_slot_L, offset_B = index + jnp.arange(L), cache["positions"]
    if positions_BxL is None:
      positions_BxL = default_positions(mask_BxL, offset_B)
    # Causal over slots (left padding keeps slots aligned across rows) and padding keys masked.
    allowed_BxLxS = (jnp.arange(S)[None, None, :] <= q_slot_L[None, :, None]) & (
        key_mask_BxS[:, None, :] > 0)

    h_BxLxD = embed(input_ids_BxL)
    hidden, new_cache = [h_BxLxD], {}
    for i in range(cfg.num_layers):
      kv = None if cache is None else cache[f"layer_{i}"]
      h_BxLxD, new_cache[f"layer_{i}"] = Layer(cfg, name=f"layer_{i}")(
          h_BxLxD, positions_BxL, allowed_BxLxS, kv, index)
      hidden.append(h_BxLxD)
    h_BxLxD = RMSNorm(cfg.rms_norm_eps, name="final_norm")(h_BxLxD)
    hidden[-1] = h_BxLxD  # as HF: the last hidden state is the normed one
    out = {"last_hidden_state": h_BxLxD, "hidden_states": tuple(hidden)}
    if cfg.tie_word_embeddings:
      out["logits"] = jnp.matmul(_logit_rows(h_BxLxD, last_logits_only, logit_positions_BxA),
                                 embed.embedding.T, preferred_element_type=jnp.float32)
    if cache is not None:
      new_cache.update(mask=key_mask_BxS, index=index + L,
                       positions=cache["positions"] + jnp.sum(mask_BxL, axis=1))
      out["cache"] = new_cache
    return out


class Decoder(nn.Module):
  """Causal LM: `DecoderStack` ("decoder") + untied `lm_head` when not tie_word_embeddings."""
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               positions_BxL: Array | None = None, output_hidden_states: bool = False,
               cache: dict[str, Any] | None = None,
               last_logits_only: bool = False,
               logit_positions_BxA: Array | None = None) -> dict[str, Any]:
    """Runs the decoder.

    Args:
      input_ids: int B×L token ids.
      attention_mask: int B×L, 1 real / 0 padding (default all ones). Pad on the LEFT for
        generation; any padding works for scoring.
      positions_BxL: int B×L RoPE positions (default cumsum(mask) - 1 from the cached count).
      output_hidden_states: also return the L+1 hidden states (embedding output first, the last
        one after the final norm, as HF).
      cache: a KV cache from `init_cache` (or a previous call); this chunk is written at
        cache["index"].
      last_logits_only: logits of the last position only (B×1×V): a prefill needs no more, and
        B×L×V is the largest tensor of a long prompt.
      logit_positions_BxA: int B×A, logits at these positions only (B×A×V): a loss on a few
        answer tokens needs no more (the LM head and B×L×V dominate a short-answer step).

    Returns:
      dict with "logits" f32 B×L×V, "last_hidden_state" f32 B×L×D, "hidden_states" when asked,
      "cache" (updated) when a cache was given.
    """
    cfg = self.cfg
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    out = DecoderStack(cfg, name="decoder")(input_ids, attention_mask, positions_BxL, cache,
                                            last_logits_only, logit_positions_BxA)
    if not cfg.tie_word_embeddings:
      h_BxLxD = _logit_rows(out["last_hidden_state"], last_logits_only, logit_positions_BxA)
      out["logits"] = Dense(cfg.vocab_size, False, jnp.float32, cfg.initializer_range,
                            name="lm_head")(h_BxLxD)
    if not output_hidden_states:
      del out["hidden_states"]
    return out


# ---------------------------------------------------------------------------------------------
# What a registry entry needs besides the classes.

def init_params(cfg: DecoderConfig, rng: jax.Array) -> Params:
  """Random f32 params (normal(initializer_range) kernels, unit norms, zero biases)."""
  ids = jnp.zeros((1, 4), jnp.int32)
  return jax.jit(lambda r: Decoder(cfg).init(r, ids)["params"])(rng)


def layer_paths(cfg: DecoderConfig) -> dict[str, Any]:
  """Which '/'-joined param path prefixes are embeddings, layers (in order), norms and the head.

  "head" is the output projection: `lm_head` when untied, else the shared embedding.
  """
  return {
      "embeddings": ["decoder/embed"],
      "layers": [f"decoder/layer_{i}" for i in range(cfg.num_layers)],
      "norms": ["decoder/final_norm"] + [f"decoder/layer_{i}/{n}" for i in range(cfg.num_layers)
                                         for n in ("attn_norm", "mlp_norm")],
      "head": ["decoder/embed"] if cfg.tie_word_embeddings else ["lm_head"],
      "layer_regex": r"^decoder/layer_(\d+)/",
  }


def slice_layers(params: Params, cfg: DecoderConfig, layers: Sequence[int]
                 ) -> tuple[Params, DecoderConfig]:
  """Copies teacher layers `layers` (in that order) into a student renumbered 0..len-1.

  Embedding, final norm and lm_head are copied too. Returns (params, cfg with num_layers).
  """
  layers = [int(i) for i in layers]
  if not layers or any(not 0 <= i < cfg.num_layers for i in layers):
    raise ValueError(f"slice_layers: layers={layers} must be a non-empty list of indices in "
                     f"[0, {cfg.num_layers}).")
  copy = lambda t: jax.tree_util.tree_map(lambda x: x.copy() if hasattr(x, "copy") else x, t)
  dec = params["decoder"]
  new_dec = {k: copy(v) for k, v in dec.items() if not re.fullmatch(r"layer_\d+", k)}
  new_dec.update({f"layer_{j}": copy(dec[f"layer_{i}"]) for j, i in enumerate(layers)})
  out = {k: copy(v) for k, v in params.items() if k != "decoder"}
  out["decoder"] = new_dec
  return out, cfg.replace(num_layers=len(layers))


def analytic_flops(cfg: DecoderConfig, batch: int, seq_len: int, train: bool, *,
                   trainable_from_layer: int = 0) -> float:
  """Analytic FLOPs of a forward (or training) pass over batch×seq_len tokens, matmuls only.

  Per layer, T = B·S tokens: projections 2·T·D·(2·H·hd + 2·KV·hd) and SwiGLU 2·T·3·D·F;
  attention 4·B·S²·H·hd (full S×S scores as computed, not the causal half); lm head 2·T·D·V.
  Training adds ≈ 2× the forward of the part gradients flow through (layers >=
  `trainable_from_layer` and the head), as `research.cost.analytic_encoder_flops`.
  """
  L, D, F, V = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  qo, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  if not 0 <= trainable_from_layer <= L:
    raise ValueError(f"analytic_flops: trainable_from_layer={trainable_from_layer} must be in "
                     f"[0, num_layers={L}].")
  B, S = batch, seq_len
  T = B * S
  per_layer = 2.0 * T * (D * (2 * qo + 2 * kv) + 3 * D * F) + 4.0 * B * S * S * qo
  head = 2.0 * T * D * V
  forward = L * per_layer + head
  if not train:
    return forward
  return forward + 2.0 * ((L - trainable_from_layer) * per_layer + head)


SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                "intermediate_size", "tie_word_embeddings", "attention_bias")
