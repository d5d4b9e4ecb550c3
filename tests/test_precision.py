"""Mixed-precision matmul: bf16 forward and backward dots with f32 accumulation, f32 unchanged."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import encoder, precision

BF16 = jnp.bfloat16


def _dots(fn, *args):
  """Input dtypes of every dot_general in the jaxpr of `fn` (custom-vjp bodies included)."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


def _xw(shape=(2, 5, 8)):
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.standard_normal(shape), jnp.float32),
          jnp.asarray(rng.standard_normal((shape[-1], 6)), jnp.float32))


@pytest.mark.parametrize("shape", [(4, 8), (2, 5, 8), (2, 3, 5, 8)])
def test_bf16_gradients_are_the_reference_gradient_to_bf16_rounding(shape):
  x, w = _xw(shape)
  ours = jax.grad(lambda x, w: jnp.sum(precision.matmul(x, w, BF16) ** 2), (0, 1))(x, w)
  ref = jax.grad(lambda x, w: jnp.sum(jnp.matmul(x.astype(BF16), w.astype(BF16),
                                                 preferred_element_type=jnp.float32) ** 2),
                 (0, 1))(x, w)
  for o, r, p in zip(ours, ref, (x, w)):
    assert o.dtype == p.dtype and o.shape == p.shape
    assert float(jnp.linalg.norm(o - r) / jnp.linalg.norm(r)) < 1e-2


def test_bf16_backward_dots_take_bf16_operands_where_jax_would_upcast():
  x, w = _xw()
  loss = lambda m: (lambda x, w: jnp.sum(m(x, w) ** 2))
  plain = lambda x, w: jnp.matmul(x.astype(BF16), w.astype(BF16),
                                  preferred_element_type=jnp.float32)
  ours = _dots(jax.grad(loss(lambda x, w: precision.matmul(x, w, BF16)), (0, 1)), x, w)
  theirs = _dots(jax.grad(loss(plain), (0, 1)), x, w)
  assert len(ours) == 3 and all(d == ("bfloat16", "bfloat16") for d in ours)
  assert any("float32" in d for d in theirs)  # what the custom backward avoids


def test_float32_is_the_plain_matmul_and_its_gradient():
  x, w = _xw()
  f = lambda m: jax.grad(lambda x, w: jnp.sum(jnp.sin(m(x, w))), (0, 1))(x, w)
  ours = f(lambda x, w: precision.matmul(x, w, jnp.float32))
  ref = f(lambda x, w: x @ w)
  for o, r in zip(ours, ref):
    np.testing.assert_allclose(o, r, rtol=1e-6, atol=1e-6)


def test_a_bf16_encoder_trains_with_bf16_dense_gradients():
  cfg = encoder.EncoderConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
                              intermediate_size=32, max_position_embeddings=16, num_labels=3,
                              dtype="bfloat16")
  model = encoder.EncoderClassifier(cfg)
  ids = jnp.ones((2, 6), jnp.int32)
  args = (ids, jnp.ones_like(ids), jnp.zeros_like(ids))
  params = model.init(jax.random.key(0), *args)["params"]
  loss = lambda p: jnp.sum(model.apply({"params": p}, *args)["logits"])
  grads = jax.grad(loss)(params)
  assert all(g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))
             for g in jax.tree.leaves(grads))
  dots = _dots(jax.grad(loss), params)
  # Dense layers' forward and backward dots are bf16; the f32 classifier head stays f32.
  assert sum(d == ("bfloat16", "bfloat16") for d in dots) >= 3 * 6  # q, k, v, out, up, down


def test_a_kernel_that_is_not_2d_is_refused_with_its_shapes():
  with pytest.raises(ValueError, match="w must be 2-D"):
    precision.matmul(jnp.ones((2, 3)), jnp.ones((3, 4, 5)), BF16)
