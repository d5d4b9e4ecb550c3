"""Text generation with a `Decoder`: one jitted prefill, then one jitted decode loop.

The prefill writes the (left-padded, length-bucketed) prompt into a preallocated dense KV cache;
the decode loop is a `lax.while_loop` whose body (one token for every row) is compiled once and
reused for every step, with the cache donated. Shapes depend only on (batch, prompt bucket,
max_new_tokens), so repeated calls do not recompile.

Sampling: greedy (temperature 0), or temperature with optional top-k / top-p (nucleus). The
returned log-probs are those of the emitted tokens under the unmodified model distribution
(log_softmax of the raw logits), whatever the sampling settings.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.models.decoder import Decoder, DecoderConfig, init_cache

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to pick tokens. temperature 0 = greedy; top_k 0 = off; top_p 1.0 = off."""
  max_new_tokens: int = 32
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0

  def __post_init__(self):
    object.__setattr__(self, "stop_ids", tuple(int(i) for i in self.stop_ids))  # hashable
    if self.max_new_tokens < 1:
      raise ValueError(f"SamplingConfig.max_new_tokens={self.max_new_tokens} must be >= 1.")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"SamplingConfig.top_p={self.top_p} must be in (0, 1].")


def bucket_length(n: int, minimum: int = 16) -> int:
  """Smallest power of two >= max(n, minimum): prompt lengths share a few compiled shapes."""
  return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token id lists to `length`: (ids int32 B×length, mask int32 B×length)."""
  ids = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), np.int32)
  for r, p in enumerate(prompts):
    if not 0 < len(p) <= length:
      raise ValueError(f"prompt {r} has {len(p)} tokens; need 1..{length}.")
    ids[r, length - len(p):] = p
    mask[r, length - len(p):] = 1
  return ids, mask


def sample_logits(logits_BxV: Array, rng: Array, s: SamplingConfig) -> Array:
  """Picks one token per row (int32 B) from f32 logits under sampling config `s`."""
  if s.temperature <= 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  neg = jnp.finfo(jnp.float32).min
  x_BxV = logits_BxV.astype(jnp.float32) / s.temperature
  if s.top_k > 0:
    kth_Bx1 = jax.lax.top_k(x_BxV, s.top_k)[0][:, -1:]
    x_BxV = jnp.where(x_BxV < kth_Bx1, neg, x_BxV)
  if s.top_p < 1.0:
    # Keep the smallest prefix of tokens (by probability) whose mass reaches top_p.
    sorted_BxV = jnp.sort(x_BxV, axis=-1)[:, ::-1]
    cum_BxV = jnp.cumsum(jax.nn.softmax(sorted_BxV, axis=-1), axis=-1)
    keep_BxV = (cum_BxV - jax.nn.softmax(sorted_BxV, axis=-1)) < s.top_p
    cutoff_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    x_BxV = jnp.where(x_BxV < cutoff_Bx1, neg, x_BxV)
  return jax.random.categorical(rng, x_BxV, axis=-1).astype(jnp.int32)


@functools.lru_cache(maxsize=32)
def _compiled(cfg: DecoderConfig, s: SamplingConfig):
  """(prefill, decode) jitted for one model config and sampling config."""
  model = Decoder(cfg)
  stop = jnp.asarray(s.stop_ids or (-1,), jnp.int32)
  N = s.max_new_tokens

  def pick(logits_BxV, rng, step):
    token_B = sample_logits(logits_BxV, jax.random.fold_in(rng, step), s)
    logp_B = jnp.take_along_axis(jax.nn.log_softmax(logits_BxV, axis=-1), token_B[:, None],
                                 axis=-1)[:, 0]
    return token_B, logp_B

  def record(state, token_B, logp_B):
    """Writes step `t`'s token (pad for rows already finished); marks rows that hit a stop id."""
    t, done_B = state["t"], state["done"]
    token_B = jnp.where(done_B, s.pad_id, token_B)
    return {**state, "t": t + 1, "last": token_B,
            "tokens": state["tokens"].at[:, t].set(token_B),
            "logprobs": state["logprobs"].at[:, t].set(jnp.where(done_B, 0.0, logp_B)),
            "lengths": state["lengths"] + (~done_B).astype(jnp.int32),
            "done": done_B | jnp.isin(token_B, stop)}

  @jax.jit
  def prefill(params, ids_BxP, mask_BxP, rng):
    B, P = ids_BxP.shape
    cache = init_cache(cfg, B, P + N)
    out = model.apply({"params": params}, ids_BxP, mask_BxP, cache=cache, last_logits_only=True)
    state = {"t": jnp.zeros((), jnp.int32), "tokens": jnp.full((B, N), s.pad_id, jnp.int32),
             "logprobs": jnp.zeros((B, N), jnp.float32), "lengths": jnp.zeros((B,), jnp.int32),
             "done": jnp.zeros((B,), bool), "last": jnp.zeros((B,), jnp.int32),
             "cache": out["cache"]}
    # Left padding: the last slot is every row's last prompt token.
    return record(state, *pick(out["logits"][:, -1], rng, 0))

  @functools.partial(jax.jit, donate_argnums=(1,))
  def decode(params, state, rng):
    def cond(st):
      return (st["t"] < N) & ~jnp.all(st["done"])

    def body(st):
      ids_Bx1 = st["last"][:, None]
      out = model.apply({"params": params}, ids_Bx1, jnp.ones_like(ids_Bx1), cache=st["cache"])
      return record({**st, "cache": out["cache"]}, *pick(out["logits"][:, -1], rng, st["t"]))

    return jax.lax.while_loop(cond, body, state)

  return prefill, decode


def generate(params: Any, cfg: DecoderConfig, prompts: Sequence[Sequence[int]],
             s: SamplingConfig = SamplingConfig(), rng: Array | None = None,
             prompt_bucket: int | None = None) -> dict[str, np.ndarray]:
  """Generates up to `s.max_new_tokens` tokens for each prompt (a batch, left padded).

  Args:
    params: decoder params (f32; jnp or numpy).
    cfg: the decoder config (its dtype is the compute dtype).
    prompts: B token-id lists (no padding).
    s: sampling config (stop ids end a row: it emits the stop token, then `pad_id`).
    rng: PRNG key for sampling (default PRNGKey(0)); unused when greedy.
    prompt_bucket: padded prompt length (default `bucket_length` of the longest prompt).

  Returns:
    {"tokens": int32 B×N (pad after a stop), "logprobs": f32 B×N (0 after a stop),
     "lengths": int32 B (tokens emitted, the stop token included)}.
  """
  rng = jax.random.PRNGKey(0) if rng is None else rng
  P = prompt_bucket or bucket_length(max(len(p) for p in prompts))
  ids, mask = left_pad(prompts, P, s.pad_id)
  prefill, decode = _compiled(cfg, s)
  state = decode(params, prefill(params, ids, mask, rng), rng)
  return {k: np.asarray(state[k]) for k in ("tokens", "logprobs", "lengths")}
