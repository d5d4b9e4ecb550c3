"""Tests for research/losses.py on tiny random arrays (no model needed)."""

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import optax
import pytest

from research import losses

B, C, L, H = 4, 5, 6, 2


def _logits(seed, shape=(B, C), scale=1.0):
  # numpy, not jax.random: eager jax ops compile one by one and would dominate the test time.
  return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _softmax(x, axis=-1):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def _outputs(seed, num_layers, width, heads=H, mask_BxL=None):
  """A fake model output dict: logits, hidden_states (Ls+1), attentions (Ls, softmax rows)."""
  rng = np.random.default_rng(seed)
  hidden = tuple(jnp.asarray(rng.normal(size=(B, L, width)), jnp.float32)
                 for _ in range(num_layers + 1))
  attn = []
  for _ in range(num_layers):
    scores = rng.normal(size=(B, heads, L, L))
    if mask_BxL is not None:
      scores = np.where(np.asarray(mask_BxL)[:, None, None, :] > 0, scores, -1e9)
    attn.append(jnp.asarray(_softmax(scores), jnp.float32))
  return {"logits": _logits(seed + 100), "hidden_states": hidden, "attentions": tuple(attn)}


def _batch(valid=None):
  mask = np.ones((B, L), np.int32)
  mask[1, 4:] = 0
  mask[3, 2:] = 0
  return {"label": np.array([0, 3, 1, -1], np.int32), "attention_mask": mask,
          "valid": np.ones(B, np.float32) if valid is None else valid}


# ----------------------------------------------------------------------------- label losses


def test_cross_entropy_matches_optax_and_ignores_unlabeled_rows():
  z = _logits(0)
  labels = jnp.array([0, 3, 1, -1])
  loss, m = losses.cross_entropy(logits_BxC=z, labels_B=labels, valid_B=jnp.ones(B))
  ref = optax.softmax_cross_entropy_with_integer_labels(z[:3], labels[:3]).mean()
  np.testing.assert_allclose(loss, ref, rtol=1e-6)
  assert m["ce"] == loss
  smooth, _ = losses.cross_entropy(logits_BxC=z, labels_B=labels, valid_B=jnp.ones(B),
                                   label_smoothing=0.1)
  ref = optax.softmax_cross_entropy(z[:3], optax.smooth_labels(jax.nn.one_hot(labels[:3], C), 0.1))
  np.testing.assert_allclose(smooth, ref.mean(), rtol=1e-6)


def test_sigmoid_cross_entropy_matches_optax():
  z = _logits(1)
  y = jnp.asarray(np.random.default_rng(2).uniform(size=(B, C)) > 0.5, jnp.float32)
  loss, _ = losses.sigmoid_cross_entropy(logits_BxC=z, labels_BxC=y, valid_B=jnp.ones(B))
  np.testing.assert_allclose(loss, optax.sigmoid_binary_cross_entropy(z, y).mean(), rtol=1e-6)


def test_labels_only_equals_ce_on_teacher_argmax():
  s, t = _logits(0), _logits(1)
  valid = jnp.ones(B)
  got, _ = losses.labels_only(student_logits_BxC=s, teacher_logits_BxC=t, valid_B=valid)
  want, _ = losses.cross_entropy(logits_BxC=s, labels_B=jnp.argmax(t, -1), valid_B=valid)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Through the registry the batch labels are ignored: only the teacher's answers count.
  via, _ = losses.combined_loss({"labels_only": 1.0}, student_out={"logits": s},
                                teacher_out={"logits": t}, batch=_batch())
  np.testing.assert_allclose(via, want, rtol=1e-6)


# ----------------------------------------------------------------------------- KL


def test_kd_kl_zero_iff_student_equals_teacher():
  z = _logits(0)
  for t in (1.0, 4.0):
    same, _ = losses.kd_kl(student_logits_BxC=z, teacher_logits_BxC=z, valid_B=jnp.ones(B),
                           temperature=t)
    diff, _ = losses.kd_kl(student_logits_BxC=_logits(1), teacher_logits_BxC=z,
                           valid_B=jnp.ones(B), temperature=t)
    assert abs(float(same)) < 1e-6
    assert float(diff) > 1e-3


def test_kd_kl_gradient_is_analytic_and_matches_finite_differences():
  s, t, temp = _logits(0), _logits(1), 2.0
  valid = jnp.array([1.0, 1.0, 1.0, 0.0])
  f = lambda z: losses.kd_kl(student_logits_BxC=z, teacher_logits_BxC=t, valid_B=valid,
                             temperature=temp)[0]
  # d/dz_s [T² KL(p_t ‖ p_s)] = T (p_s − p_t) per valid row, averaged over the 3 valid rows.
  want = temp * (jax.nn.softmax(s / temp) - jax.nn.softmax(t / temp)) * valid[:, None] / 3
  np.testing.assert_allclose(jax.grad(f)(s), want, atol=1e-6)
  check_grads(f, (s,), order=1, modes=("rev",), eps=1e-2, atol=2e-2, rtol=2e-2)


def test_t_squared_keeps_gradient_scale_across_temperatures():
  """Grad norms of T²·KL_T stay within [0.5, 2]× the T=1 norm for T in {2, 4, 8}.

  Why: ∂KL_T/∂z_s = (p_s^T − p_t^T)/T and, for large T, p^T ≈ 1/C + (z − mean z)/(C·T), so
  T²·∂KL_T/∂z_s → (z_s − z_t − mean)/C, independent of T. At T=1 with logits of scale ~1 the
  softmax is near its linear regime too, so all norms are comparable. Without the T² factor the
  norm would fall ~1/T² (checked below, so the band is not vacuous).
  """
  s, t = _logits(0), _logits(1)
  valid = jnp.ones(B)

  def grad_norm(temp, scale):
    g = jax.grad(lambda z: losses.kd_kl(student_logits_BxC=z, teacher_logits_BxC=t, valid_B=valid,
                                        temperature=temp)[0])(s)
    return float(jnp.linalg.norm(g)) * scale

  base = grad_norm(1.0, 1.0)
  for temp in (2.0, 4.0, 8.0):
    assert 0.5 * base <= grad_norm(temp, 1.0) <= 2.0 * base, temp
  assert grad_norm(8.0, 1 / 64) < 0.5 * base  # plain KL (T² removed) collapses


def test_reverse_kl_and_mse_zero_at_match_and_asymmetric():
  s, t, v = _logits(0), _logits(1), jnp.ones(B)
  fwd, _ = losses.kd_kl(student_logits_BxC=s, teacher_logits_BxC=t, valid_B=v)
  rev, _ = losses.kd_reverse_kl(student_logits_BxC=s, teacher_logits_BxC=t, valid_B=v)
  back, _ = losses.kd_kl(student_logits_BxC=t, teacher_logits_BxC=s, valid_B=v)
  np.testing.assert_allclose(rev, back, rtol=1e-5)
  assert abs(float(fwd) - float(rev)) > 1e-4
  zero, _ = losses.kd_reverse_kl(student_logits_BxC=s, teacher_logits_BxC=s, valid_B=v)
  assert float(zero) < 1e-6
  mse, _ = losses.kd_mse(student_logits_BxC=s, teacher_logits_BxC=t, valid_B=v)
  np.testing.assert_allclose(mse, jnp.mean((s - t)**2), rtol=1e-6)


def test_multilabel_kl_is_mean_bernoulli_kl():
  s, t, temp = _logits(0), _logits(1), 2.0
  got, _ = losses.kd_kl(student_logits_BxC=s, teacher_logits_BxC=t, valid_B=jnp.ones(B),
                        temperature=temp, multilabel=True)
  ps, pt = jax.nn.sigmoid(s / temp), jax.nn.sigmoid(t / temp)
  kl = pt * jnp.log(pt / ps) + (1 - pt) * jnp.log((1 - pt) / (1 - ps))
  np.testing.assert_allclose(got, temp**2 * kl.mean(), rtol=1e-5)


def test_topk_kl_equals_kl_at_full_k_and_drops_tail_below():
  s, t, v = _logits(0), _logits(1), jnp.ones(B)
  full, _ = losses.kd_kl(student_logits_BxC=s, teacher_logits_BxC=t, valid_B=v, temperature=2.0)
  topk, m = losses.kd_topk(student_logits_BxC=s, teacher_logits_BxC=t, valid_B=v, temperature=2.0,
                           k=C)
  np.testing.assert_allclose(topk, full, rtol=1e-5)
  np.testing.assert_allclose(m["topk_mass"], 1.0, rtol=1e-6)
  part, m = losses.kd_topk(student_logits_BxC=s, teacher_logits_BxC=t, valid_B=v, temperature=2.0,
                           k=2)
  assert 0.0 < float(m["topk_mass"]) < 1.0
  assert float(part) >= 0.0


# ----------------------------------------------------------------------------- multi-teacher


def test_multi_teacher_with_one_teacher_equals_single_teacher():
  s, t, v = _logits(0), _logits(1), jnp.array([1.0, 0.0, 1.0, 1.0])
  single, _ = losses.kd_kl(student_logits_BxC=s, teacher_logits_BxC=t, valid_B=v, temperature=3.0)
  for per_teacher in (False, True):
    multi, _ = losses.multi_teacher_kl(student_logits_BxC=s, teacher_logits=[t], valid_B=v,
                                       temperature=3.0, per_teacher=per_teacher)
    np.testing.assert_allclose(multi, single, rtol=1e-5)


def test_multi_teacher_averages_probabilities_with_weights():
  s, t1, t2, temp = _logits(0), _logits(1), _logits(2), 2.0
  got, m = losses.multi_teacher_kl(student_logits_BxC=s, teacher_logits=[t1, t2],
                                   valid_B=jnp.ones(B), temperature=temp, teacher_weights=[3, 1])
  pt = 0.75 * jax.nn.softmax(t1 / temp) + 0.25 * jax.nn.softmax(t2 / temp)
  kl = jnp.sum(pt * (jnp.log(pt) - jax.nn.log_softmax(s / temp)), -1).mean()
  np.testing.assert_allclose(got, temp**2 * kl, rtol=1e-5)
  each, _ = losses.multi_teacher_kl(student_logits_BxC=s, teacher_logits=[t1, t2],
                                    valid_B=jnp.ones(B), temperature=temp, teacher_weights=[3, 1],
                                    per_teacher=True)
  np.testing.assert_allclose(each, temp**2 * (0.75 * m["kl_teacher_0"] + 0.25 * m["kl_teacher_1"]),
                             rtol=1e-5)
  # Jensen: KL to the mixture <= mixture of KLs.
  assert float(got) <= float(each) + 1e-6
  with pytest.raises(ValueError, match="one weight per teacher"):
    losses.multi_teacher_kl(student_logits_BxC=s, teacher_logits=[t1, t2], valid_B=jnp.ones(B),
                            teacher_weights=[1.0])


# ----------------------------------------------------------------------------- features


def test_hidden_mse_projection_shapes_6_to_3_layers_384_to_256():
  teacher = _outputs(0, num_layers=6, width=384)
  student = _outputs(1, num_layers=3, width=256)
  layer_map = losses.default_layer_map(3, 6)
  assert layer_map == (1, 3, 5)
  proj = losses.init_projections(jax.random.key(0), 256, 384, len(layer_map))
  assert jax.tree.map(jnp.shape, proj) == {
      f"proj_{i}": {"kernel": (256, 384), "bias": (384,)} for i in range(3)}
  batch = _batch()

  def f(p):
    return losses.hidden_mse(student_hidden=student["hidden_states"],
                             teacher_hidden=teacher["hidden_states"],
                             mask_BxL=batch["attention_mask"], valid_B=batch["valid"],
                             layer_map=layer_map, proj_params=p)[0]

  loss, grads = jax.jit(jax.value_and_grad(f))(proj)
  assert loss.shape == () and np.isfinite(loss)
  assert jax.tree.map(jnp.shape, grads) == jax.tree.map(jnp.shape, proj)
  shared = losses.init_projections(jax.random.key(0), 256, 384, 1)
  assert np.isfinite(f(shared))
  with pytest.raises(ValueError, match="init_projections"):
    f({})
  assert losses.init_projections(jax.random.key(0), 384, 384, 3) == {}


def test_hidden_mse_zero_for_identical_states_and_ignores_padding_tokens():
  out = _outputs(0, num_layers=2, width=8)
  batch = _batch()
  kw = dict(mask_BxL=batch["attention_mask"], valid_B=batch["valid"], layer_map=(0, 1))
  zero, _ = losses.hidden_mse(student_hidden=out["hidden_states"],
                              teacher_hidden=out["hidden_states"], **kw)
  assert float(zero) == 0.0
  noisy = tuple(h.at[3, 2:].add(5.0) for h in out["hidden_states"])  # only row 3's padding tokens
  same, _ = losses.hidden_mse(student_hidden=noisy, teacher_hidden=out["hidden_states"], **kw)
  assert float(same) == 0.0
  with pytest.raises(ValueError, match="out of range"):
    losses.hidden_mse(student_hidden=out["hidden_states"], teacher_hidden=out["hidden_states"],
                      **{**kw, "layer_map": (0, 2)})


def test_attention_kl_masks_padding_and_averages_heads_when_counts_differ():
  batch = _batch()
  mask = jnp.asarray(batch["attention_mask"])
  a = _outputs(0, 1, 8, heads=2, mask_BxL=mask)["attentions"][-1]
  b = _outputs(1, 1, 8, heads=2, mask_BxL=mask)["attentions"][-1]
  kw = dict(mask_BxL=mask, valid_B=batch["valid"])
  zero, _ = losses.attention_kl(student_attn_BxHxLxL=a, teacher_attn_BxHxLxL=a, **kw)
  assert abs(float(zero)) < 1e-6
  base, _ = losses.attention_kl(student_attn_BxHxLxL=a, teacher_attn_BxHxLxL=b, **kw)
  assert float(base) > 1e-3
  # Rows for padded queries (row 3, positions >= 2) do not count.
  a_pad = a.at[3, :, 2:, :].set(jnp.eye(L)[2:])
  moved, _ = losses.attention_kl(student_attn_BxHxLxL=a_pad, teacher_attn_BxHxLxL=b, **kw)
  np.testing.assert_allclose(moved, base, rtol=1e-6)
  # 4 student heads vs 2 teacher heads: compare head-averaged distributions.
  a4 = jnp.concatenate([a, a], 1)
  mixed, _ = losses.attention_kl(student_attn_BxHxLxL=a4, teacher_attn_BxHxLxL=b, **kw)
  want, _ = losses.attention_kl(student_attn_BxHxLxL=a.mean(1, keepdims=True),
                                teacher_attn_BxHxLxL=b.mean(1, keepdims=True), **kw)
  np.testing.assert_allclose(mixed, want, rtol=1e-6)


def test_cosine_loss_zero_for_parallel_and_one_for_orthogonal():
  mask, v = jnp.ones((1, 2)), jnp.ones(1)
  h = jnp.array([[[1.0, 0.0], [0.0, 2.0]]])
  par, m = losses.cosine_embedding(student_hidden_BxLxD=3 * h, teacher_hidden_BxLxD=h,
                                   mask_BxL=mask, valid_B=v)
  np.testing.assert_allclose(par, 0.0, atol=1e-6)
  orth, _ = losses.cosine_embedding(student_hidden_BxLxD=h[:, ::-1], teacher_hidden_BxLxD=h,
                                    mask_BxL=mask, valid_B=v)
  np.testing.assert_allclose(orth, 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- registry


def _all_outputs():
  mask = jnp.asarray(_batch()["attention_mask"])
  student = _outputs(0, num_layers=2, width=8, mask_BxL=mask)
  teacher = _outputs(1, num_layers=4, width=8, mask_BxL=mask)
  return student, teacher


# Token-level terms (tok_*) read decoder outputs at answer positions: tests/test_token_losses.py.
@pytest.mark.parametrize("name", sorted(n for n in losses.LOSSES if not n.startswith("tok_")))
def test_every_loss_ignores_padding_rows_and_is_differentiable(name):
  student, teacher = _all_outputs()
  batch = _batch()
  loss_fn = jax.jit(lambda s, t, b: losses.combined_loss({name: 1.0}, student_out=s, teacher_out=t,
                                                         batch=b, temperature=2.0, top_k=3))
  loss, metrics = loss_fn(student, teacher, batch)
  assert np.isfinite(loss) and float(loss) >= 0.0
  assert metrics["loss"] == loss and metrics[f"loss/{name}"] == loss

  # Append two garbage rows with valid = 0: the loss must not move.
  def pad(x):
    x = np.asarray(x)
    return np.concatenate([x, np.full_like(x[:2], 7)], 0)
  batch_p = {k: pad(v) for k, v in batch.items()}
  batch_p["valid"][B:] = 0.0
  padded, _ = loss_fn(jax.tree.map(pad, student), jax.tree.map(pad, teacher), batch_p)
  np.testing.assert_allclose(padded, loss, rtol=1e-5, atol=1e-7)

  grad = jax.jit(jax.grad(lambda s: loss_fn(s, teacher, batch)[0]))(student)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))


def test_combined_loss_sums_weighted_terms_and_jits():
  student, teacher = _all_outputs()
  batch = _batch()
  weights = {"ce": 0.3, "kd_kl": 0.7, "hidden_mse": 0.0}  # zero weight: hidden states not needed
  student = {"logits": student["logits"]}
  teacher = {"logits": teacher["logits"]}
  loss, m = jax.jit(lambda s, t, b: losses.combined_loss(weights, student_out=s, teacher_out=t,
                                                         batch=b, temperature=2.0))(
                                                             student, teacher, batch)
  np.testing.assert_allclose(loss, 0.3 * m["loss/ce"] + 0.7 * m["loss/kd_kl"], rtol=1e-6)
  assert "loss/hidden_mse" not in m and "ce/accuracy" in m and "kd_kl/kl" in m
  assert losses.required_outputs(weights) == {"teacher", "labels"}
  assert losses.required_outputs({"ce": 1.0}) == {"labels"}
  assert losses.required_outputs({"hidden_mse": 1, "attn_kl": 1}) == {
      "teacher", "hidden_states", "attentions"}


def test_combined_loss_errors_are_clear():
  student, teacher = _all_outputs()
  batch = _batch()
  with pytest.raises(ValueError, match=r"unknown loss name\(s\) \['kd_kll'\].*known: \['attn_kl'"):
    losses.combined_loss({"kd_kll": 1.0}, student_out=student, teacher_out=teacher, batch=batch)
  with pytest.raises(ValueError, match="must be finite and >= 0"):
    losses.check_loss_weights({"ce": -1.0})
  with pytest.raises(ValueError, match="no positive weight"):
    losses.check_loss_weights({"ce": 0.0})
  with pytest.raises(ValueError, match="output_hidden_states=True"):
    losses.combined_loss({"cosine": 1.0}, student_out={"logits": student["logits"]},
                         teacher_out=teacher, batch=batch)
  with pytest.raises(ValueError, match="temperature must be > 0"):
    losses.combined_loss({"kd_kl": 1.0}, student_out=student, teacher_out=teacher, batch=batch,
                         temperature=0.0)
  with pytest.raises(ValueError, match="needs teacher_out"):
    losses.combined_loss({"kd_kl": 1.0}, student_out=student, batch=batch)
  with pytest.raises(ValueError, match="use 'multi_kl'"):
    losses.combined_loss({"kd_kl": 1.0}, student_out=student,
                         teacher_out={"logits": [teacher["logits"]] * 2}, batch=batch)
  with pytest.raises(ValueError, match="needs batch\\['label'\\]"):
    losses.combined_loss({"ce": 1.0}, student_out=student,
                         batch={k: v for k, v in batch.items() if k != "label"})


def test_each_loss_declares_whether_it_reads_labels():
  """The labeled-data column reads the losses' own declaration, not a hard-coded name list."""
  assert losses.reads_labels({"ce": 0.5, "kd_kl": 0.5})
  assert not losses.reads_labels({"ce": 0.0, "kd_kl": 1.0})
  assert not losses.reads_labels({"labels_only": 1.0})  # the teacher's labels, not ground truth
  def focal(*, student_out, batch, **_):
    return losses.cross_entropy(logits_BxC=student_out["logits"], labels_B=batch["label"],
                                valid_B=batch["valid"])
  losses.register("test_focal", focal, requires=("labels",))
  try:
    assert losses.reads_labels({"test_focal": 1.0})
  finally:
    del losses.LOSSES["test_focal"]
