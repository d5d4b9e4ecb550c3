"""Token-level distillation for decoders: divergences per answer token, in vocabulary chunks.

Every function is pure, keyword-only, float32, and returns `(scalar, metrics)`: the mean over the
tokens with `mask_BxA` = 1 (answer tokens of real rows) of a divergence between the teacher's and
the student's next-token distributions at temperature T, times T² (Hinton et al. 2015: keeps
gradient scale comparable across T).

Kinds (`KINDS`):
* "forward": KL(p_t ‖ p_s), mass-covering — word-level KD (Kim & Rush 2016; Hinton et al. 2015).
* "reverse": KL(p_s ‖ p_t), mode-seeking (Gu et al. 2024, MiniLLM).
* "jsd": generalized Jensen-Shannon divergence (Agarwal et al. 2024, GKD), with the mixture
  M = β·p_t + (1 − β)·p_s and JSD_β = β·KL(p_t ‖ M) + (1 − β)·KL(p_s ‖ M). Convention: as β → 0
  it tends to β·KL(p_t ‖ p_s) (forward), as β → 1 to (1 − β)·KL(p_s ‖ p_t) (reverse) — the
  convention of TRL's GKDTrainer docs ("beta=0 approximates forward KL"). 0 < β < 1.

Two teacher forms:
* full logits B×A×V (`token_divergence`): the log-normaliser is an online logsumexp over static
  vocabulary chunks and each chunk's terms are reduced before the next, so beyond the logits
  themselves no B×A×V float32 temporary is needed at once (`vocab_chunk` = 0: one chunk).
* a cached top-k (`token_divergence_topk`): the teacher's k most likely tokens and one "tail" bin
  with the remaining mass (k + 1 bins, log-probs at T); the student's full distribution is folded
  into the same bins. The divergence of the binned distributions is a lower bound of the full one
  (data processing inequality) and equals it when the tail is empty.

Logits arrive at the answer positions only (B×A×V, `logit_positions` of the decoder), never B×L×V.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array
LossOut = tuple[Array, dict[str, Array]]
KINDS = ("forward", "reverse", "jsd")
_TAIL_EPS = 1e-6  # floor of a tail bin's probability, so log(tail) stays finite


def _f32(x) -> Array:
  return jnp.asarray(x, jnp.float32)


def _check(kind: str, temperature: float, beta: float) -> None:
  if kind not in KINDS:
    raise ValueError(f"token divergence kind {kind!r}; use one of {KINDS}.")
  if not temperature > 0:
    raise ValueError(f"temperature={temperature}; distill.temperature must be > 0.")
  if kind == "jsd" and not 0.0 < beta < 1.0:
    raise ValueError(f"jsd beta={beta}; distill.beta must be in (0, 1) (0: use 'tok_kl', "
                     "1: use 'tok_reverse_kl').")


def _pointwise(kind: str, lp_t: Array, lp_s: Array, beta: float) -> Array:
  """Per-outcome terms of the divergence whose sum over the last axis is the divergence."""
  if kind == "forward":
    return jnp.exp(lp_t) * (lp_t - lp_s)
  if kind == "reverse":
    return jnp.exp(lp_s) * (lp_s - lp_t)
  lp_m = jnp.logaddexp(math.log(beta) + lp_t, math.log1p(-beta) + lp_s)
  return beta * jnp.exp(lp_t) * (lp_t - lp_m) + (1 - beta) * jnp.exp(lp_s) * (lp_s - lp_m)


def _chunks(size: int, chunk: int) -> list[tuple[int, int]]:
  chunk = size if chunk <= 0 else min(int(chunk), size)
  return [(s, min(s + chunk, size)) for s in range(0, size, chunk)]


def _logsumexp(z_BxAxV: Array, chunks) -> Array:
  out = None
  for s, e in chunks:
    part = jax.nn.logsumexp(z_BxAxV[..., s:e], -1)
    out = part if out is None else jnp.logaddexp(out, part)
  return out


def _token_mean(div_BxA: Array, mask_BxA: Array) -> tuple[Array, Array]:
  mask = _f32(mask_BxA)
  n = jnp.sum(mask)
  return jnp.sum(div_BxA * mask) / jnp.maximum(n, 1.0), n


def token_divergence(*, student_logits_BxAxV: Array, teacher_logits_BxAxV: Array,
                     mask_BxA: Array, kind: str = "forward", temperature: float = 1.0,
                     beta: float = 0.5, vocab_chunk: int = 0) -> LossOut:
  """T² · mean over answer tokens of D_kind(p_t^T, p_s^T) with full teacher logits.

  Args:
    student_logits_BxAxV, teacher_logits_BxAxV: next-token logits at the answer positions (the
      teacher is not differentiated).
    mask_BxA: 1 on answer tokens of real rows.
    kind: "forward" | "reverse" | "jsd" (see the module docstring for the β convention).
    temperature: T > 0.
    beta: the JSD mixture weight of the teacher, 0 < β < 1 (kind "jsd" only).
    vocab_chunk: vocabulary entries per chunk (0: all at once); the result does not depend on it.

  Returns:
    (loss, {"divergence": unscaled mean divergence, "tokens": answer tokens counted}).
  """
  _check(kind, temperature, beta)
  z_s = _f32(student_logits_BxAxV) / temperature
  z_t = jax.lax.stop_gradient(_f32(teacher_logits_BxAxV)) / temperature
  if z_s.shape != z_t.shape:
    raise ValueError(f"student logits {z_s.shape} vs teacher logits {z_t.shape}: token KD needs "
                     "one vocabulary (the same tokenizer); use sequence-level KD across tokenizers.")
  chunks = _chunks(z_s.shape[-1], vocab_chunk)
  lse_s, lse_t = _logsumexp(z_s, chunks), _logsumexp(z_t, chunks)
  div = jnp.zeros(z_s.shape[:-1], jnp.float32)
  for s, e in chunks:
    div = div + jnp.sum(_pointwise(kind, z_t[..., s:e] - lse_t[..., None],
                                   z_s[..., s:e] - lse_s[..., None], beta), -1)
  mean, n = _token_mean(div, mask_BxA)
  return mean * temperature**2, {"divergence": mean, "tokens": n}


def mix_teachers(teacher_logits: list[Array], weights: tuple[float, ...] | None,
                 temperature: float) -> Array:
  """Logits whose softmax at `temperature` is Σ_i w_i softmax(z_i / T): several teachers'
  distributions averaged per token (weights normalised; None: uniform) — the multi-teacher soft
  target of You et al. 2017 ("Learning from Multiple Teacher Networks"), per token.
  """
  w = jnp.asarray(weights if weights else [1.0] * len(teacher_logits), jnp.float32)
  lw = jnp.log(w / jnp.sum(w))
  lp = jnp.stack([jax.nn.log_softmax(_f32(z) / temperature, axis=-1) for z in teacher_logits])
  mix = jax.nn.logsumexp(lp + lw.reshape((-1,) + (1,) * (lp.ndim - 1)), axis=0)
  return mix * temperature  # normalised log-probs at T: softmax(mix * T / T) is the mixture


def teacher_topk(*, teacher_logits_BxAxV: Array, k: int, temperature: float = 1.0
                 ) -> tuple[Array, Array]:
  """What a top-k cache stores: (token ids B×A×k int32, log-probs at T of k tokens + tail B×A×(k+1))."""
  if int(k) < 1:
    raise ValueError(f"top_k={k}; keep at least one token.")
  z = _f32(teacher_logits_BxAxV) / temperature
  lp = jax.nn.log_softmax(z, -1)
  top_lp, ids = jax.lax.top_k(lp, min(int(k), z.shape[-1]))
  return ids.astype(jnp.int32), jnp.concatenate([top_lp, _tail(top_lp)], -1)


def _tail(top_lp_BxAxK: Array) -> Array:
  """log(1 − Σ p) of the bins outside the top-k, floored at _TAIL_EPS."""
  kept = jnp.minimum(jnp.sum(jnp.exp(top_lp_BxAxK), -1, keepdims=True), 1.0 - _TAIL_EPS)
  return jnp.log1p(-kept)


def token_divergence_topk(*, student_logits_BxAxV: Array, teacher_ids_BxAxK: Array,
                          teacher_logprobs_BxAxK1: Array, mask_BxA: Array, kind: str = "forward",
                          temperature: float = 1.0, beta: float = 0.5,
                          vocab_chunk: int = 0) -> LossOut:
  """`token_divergence` against a cached top-k teacher (k tokens + a tail bin, at T).

  Args:
    teacher_ids_BxAxK, teacher_logprobs_BxAxK1: `teacher_topk` output (made at this temperature).
    Others as `token_divergence`.

  Returns:
    (loss, {"divergence", "tokens", "teacher_topk_mass"}).
  """
  _check(kind, temperature, beta)
  z_s = _f32(student_logits_BxAxV) / temperature
  lse_s = _logsumexp(z_s, _chunks(z_s.shape[-1], vocab_chunk))
  top_s = jnp.take_along_axis(z_s, teacher_ids_BxAxK.astype(jnp.int32), -1) - lse_s[..., None]
  lp_s = jnp.concatenate([top_s, _tail(top_s)], -1)
  lp_t = jax.lax.stop_gradient(_f32(teacher_logprobs_BxAxK1))
  div = jnp.sum(_pointwise(kind, lp_t, lp_s, beta), -1)
  mean, n = _token_mean(div, mask_BxA)
  mass, _ = _token_mean(jnp.sum(jnp.exp(lp_t[..., :-1]), -1), mask_BxA)
  return mean * temperature**2, {"divergence": mean, "tokens": n, "teacher_topk_mass": mass}
