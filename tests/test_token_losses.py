"""Token-level KD divergences: against plain formulas, chunk-invariant, masked, with the β limits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import losses
from research import token_losses as tl

B, A, V = 3, 4, 37


@pytest.fixture
def logits():
  rng = np.random.RandomState(0)
  z_s = jnp.asarray(rng.normal(size=(B, A, V)) * 2, jnp.float32)
  z_t = jnp.asarray(rng.normal(size=(B, A, V)) * 2, jnp.float32)
  mask = jnp.asarray(rng.rand(B, A) > 0.3, jnp.float32).at[0, 0].set(1.0)
  return z_s, z_t, mask


def _plain(kind, z_s, z_t, mask, t=1.0, beta=0.5):
  lp_s, lp_t = jax.nn.log_softmax(z_s / t, -1), jax.nn.log_softmax(z_t / t, -1)
  p_s, p_t = jnp.exp(lp_s), jnp.exp(lp_t)
  if kind == "forward":
    d = jnp.sum(p_t * (lp_t - lp_s), -1)
  elif kind == "reverse":
    d = jnp.sum(p_s * (lp_s - lp_t), -1)
  else:
    lp_m = jnp.log(beta * p_t + (1 - beta) * p_s)
    d = beta * jnp.sum(p_t * (lp_t - lp_m), -1) + (1 - beta) * jnp.sum(p_s * (lp_s - lp_m), -1)
  return float(jnp.sum(d * mask) / jnp.sum(mask)) * t * t


@pytest.mark.parametrize("kind", tl.KINDS)
@pytest.mark.parametrize("chunk", [0, 5, 16])
def test_divergence_matches_the_plain_formula_for_any_chunking(logits, kind, chunk):
  z_s, z_t, mask = logits
  got, m = tl.token_divergence(student_logits_BxAxV=z_s, teacher_logits_BxAxV=z_t, mask_BxA=mask,
                               kind=kind, temperature=2.0, beta=0.3, vocab_chunk=chunk)
  assert float(got) == pytest.approx(_plain(kind, z_s, z_t, mask, 2.0, 0.3), rel=1e-5)
  assert float(m["tokens"]) == float(mask.sum())


def test_masked_tokens_do_not_count(logits):
  z_s, z_t, mask = logits
  noise = jnp.where(mask[..., None] > 0, 0.0, 100.0)  # change only the masked-out tokens
  a, _ = tl.token_divergence(student_logits_BxAxV=z_s, teacher_logits_BxAxV=z_t, mask_BxA=mask)
  b, _ = tl.token_divergence(student_logits_BxAxV=z_s + noise * jnp.arange(V),
                             teacher_logits_BxAxV=z_t, mask_BxA=mask)
  assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_jsd_tends_to_forward_kl_at_small_beta_and_reverse_at_large(logits):
  z_s, z_t, mask = logits
  kw = dict(student_logits_BxAxV=z_s, teacher_logits_BxAxV=z_t, mask_BxA=mask)
  fwd = float(tl.token_divergence(kind="forward", **kw)[0])
  rev = float(tl.token_divergence(kind="reverse", **kw)[0])
  b = 1e-4
  assert float(tl.token_divergence(kind="jsd", beta=b, **kw)[0]) / b == pytest.approx(fwd, rel=1e-2)
  assert float(tl.token_divergence(kind="jsd", beta=1 - b, **kw)[0]) / b == pytest.approx(
      rev, rel=1e-2)


def test_forward_kl_gradient_is_student_minus_teacher_probs(logits):
  z_s, z_t, mask = logits
  t = 2.0
  grad = jax.grad(lambda z: tl.token_divergence(student_logits_BxAxV=z, teacher_logits_BxAxV=z_t,
                                                mask_BxA=mask, temperature=t)[0])(z_s)
  want = (jax.nn.softmax(z_s / t) - jax.nn.softmax(z_t / t)) * t * mask[..., None] / mask.sum()
  np.testing.assert_allclose(np.asarray(grad), np.asarray(want), atol=1e-6)


@pytest.mark.parametrize("kind", tl.KINDS)
def test_topk_cache_with_every_token_kept_is_the_full_divergence(logits, kind):
  z_s, z_t, mask = logits
  ids, lp = tl.teacher_topk(teacher_logits_BxAxV=z_t, k=V, temperature=1.5)
  got, m = tl.token_divergence_topk(student_logits_BxAxV=z_s, teacher_ids_BxAxK=ids,
                                    teacher_logprobs_BxAxK1=lp, mask_BxA=mask, kind=kind,
                                    temperature=1.5, beta=0.4)
  assert float(got) == pytest.approx(_plain(kind, z_s, z_t, mask, 1.5, 0.4), rel=1e-3)
  assert float(m["teacher_topk_mass"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kind", tl.KINDS)
def test_topk_cache_is_a_lower_bound_that_tightens_with_k(logits, kind):
  z_s, z_t, mask = logits
  full = _plain(kind, z_s, z_t, mask)
  vals = []
  for k in (2, 8, 30):
    ids, lp = tl.teacher_topk(teacher_logits_BxAxV=z_t, k=k)
    vals.append(float(tl.token_divergence_topk(student_logits_BxAxV=z_s, teacher_ids_BxAxK=ids,
                                               teacher_logprobs_BxAxK1=lp, mask_BxA=mask,
                                               kind=kind)[0]))
  assert all(v <= full + 1e-5 for v in vals)
  assert vals == sorted(vals)  # the top-k bins refine as k grows, so the divergence can only grow


def test_bad_settings_name_the_field(logits):
  z_s, z_t, mask = logits
  kw = dict(student_logits_BxAxV=z_s, teacher_logits_BxAxV=z_t, mask_BxA=mask)
  with pytest.raises(ValueError, match="distill.beta"):
    tl.token_divergence(kind="jsd", beta=1.0, **kw)
  with pytest.raises(ValueError, match="kind"):
    tl.token_divergence(kind="tvd", **kw)
  with pytest.raises(ValueError, match="same tokenizer"):
    tl.token_divergence(student_logits_BxAxV=z_s, teacher_logits_BxAxV=z_t[..., :5], mask_BxA=mask)


def test_registry_terms_read_the_answer_mask_and_either_teacher_form(logits):
  z_s, z_t, mask = logits
  batch = {"answer_mask": mask, "valid": jnp.ones(B)}
  live, _ = losses.combined_loss({"tok_kl": 1.0}, student_out={"logits": z_s},
                                 teacher_out={"logits": z_t}, batch=batch, temperature=1.0)
  ids, lp = tl.teacher_topk(teacher_logits_BxAxV=z_t, k=V)
  cached, _ = losses.combined_loss({"tok_kl": 1.0}, student_out={"logits": z_s},
                                   teacher_out={"topk_ids": ids, "topk_logprobs": lp},
                                   batch=batch, temperature=1.0)
  assert float(live) == pytest.approx(float(cached), rel=1e-3)
  with pytest.raises(ValueError, match="causal_lm"):
    losses.combined_loss({"tok_jsd": 1.0}, student_out={"logits": z_s[:, 0]},
                         teacher_out={"logits": z_t[:, 0]}, batch={"valid": jnp.ones(B)})


def test_several_teachers_mix_into_their_weighted_average_distribution():
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.normal(size=(2, 3, 11)), jnp.float32) for _ in range(2))
  t = 2.0
  mixed = tl.mix_teachers([a, b], (1.0, 3.0), t)
  want = 0.25 * jax.nn.softmax(a / t, -1) + 0.75 * jax.nn.softmax(b / t, -1)
  np.testing.assert_allclose(jax.nn.softmax(mixed / t, -1), want, rtol=1e-5, atol=1e-6)
  same = tl.mix_teachers([a, a], None, t)  # one teacher twice: that teacher
  np.testing.assert_allclose(jax.nn.softmax(same / t, -1), jax.nn.softmax(a / t, -1), rtol=1e-5)
