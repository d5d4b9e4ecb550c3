"""Tests for research.cost: counts, bytes, FLOPs (XLA and analytic) and the latency benchmark."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import cost


def _params():
  return {
      "encoder": {"layer_0": {"kernel": jnp.zeros((4, 8)), "bias": jnp.zeros((8,))},
                  "layer_1": {"kernel": jnp.zeros((8, 8)), "bias": jnp.zeros((8,), jnp.bfloat16)}},
      "head": {"kernel": jnp.zeros((8, 3)), "bias": jnp.zeros((3,))},
  }


def test_param_counts_with_mask():
  params = _params()
  labels = jax.tree_util.tree_map_with_path(
      lambda p, _: "trainable" if "head" in jax.tree_util.keystr(p) or "layer_1" in
      jax.tree_util.keystr(p) else "frozen", params)
  c = cost.param_counts(params, labels)
  assert c["total"] == 32 + 8 + 64 + 8 + 24 + 3
  assert c["trainable"] == 64 + 8 + 24 + 3
  assert c["frozen"] == 32 + 8
  assert c["bytes_params"] == 4 * (32 + 8 + 64 + 24 + 3) + 2 * 8
  assert c["bytes_trainable"] == 4 * (64 + 24 + 3) + 2 * 8
  all_c = cost.param_counts(params)
  assert all_c["trainable"] == all_c["total"] == c["total"]


def test_param_counts_bad_labels():
  params = _params()
  with pytest.raises(ValueError, match="same pytree structure"):
    cost.param_counts(params, {"head": "trainable"})
  labels = jax.tree.map(lambda _: "train", params)
  with pytest.raises(ValueError, match="'trainable' or 'frozen'"):
    cost.param_counts(params, labels)


def test_optimizer_and_peak_bytes():
  params = _params()
  labels = jax.tree.map(lambda _: "frozen", params)
  labels["head"] = {"kernel": "trainable", "bias": "trainable"}
  tx = optax.multi_transform({"trainable": optax.adam(1e-3), "frozen": optax.set_to_zero()},
                             labels)
  opt_state = tx.init(params)
  head_bytes = 4 * (24 + 3)
  # Adam: two moments for the head plus an int32 step counter.
  assert cost.optimizer_state_bytes(opt_state) == 2 * head_bytes + 4
  total = cost.param_counts(params)["bytes_params"]
  assert cost.peak_param_opt_bytes(params, opt_state, labels) == total + head_bytes + 2 * head_bytes + 4


def test_checkpoint_bytes(tmp_path):
  (tmp_path / "ckpt" / "sub").mkdir(parents=True)
  (tmp_path / "ckpt" / "a.bin").write_bytes(b"x" * 100)
  (tmp_path / "ckpt" / "sub" / "b.bin").write_bytes(b"y" * 23)
  assert cost.checkpoint_bytes(tmp_path / "ckpt") == 123
  assert cost.checkpoint_bytes(tmp_path / "ckpt" / "a.bin") == 100
  with pytest.raises(FileNotFoundError, match="checkpoint_bytes"):
    cost.checkpoint_bytes(tmp_path / "missing")


def test_step_flops_matmul_from_xla():
  m, k, n = 64, 32, 16
  fn = jax.jit(lambda a, b: a @ b)
  flops, source = cost.step_flops(fn, jnp.ones((m, k)), jnp.ones((k, n)))
  assert source == "xla_cost_analysis"
  assert 0.5 * 2 * m * n * k <= flops <= 2 * 2 * m * n * k


def test_step_flops_list_of_dicts_format():
  assert cost._xla_flops([{"flops": 10.0}, {"flops": 5.0, "bytes accessed": 1.0}]) == 15.0
  assert cost._xla_flops({"flops": 7.0}) == 7.0
  assert cost._xla_flops(None) == 0.0


def test_step_flops_analytic_fallback():
  # No matmul, no arithmetic: XLA counts 0 FLOPs, so the analytic number is used and labelled.
  fn = jax.jit(lambda x: x.reshape(-1))
  x = jnp.ones((4, 4))
  assert cost.step_flops(fn, x, analytic=123.0) == (123.0, "analytic")
  assert cost.step_flops(fn, x, analytic=lambda: 7.0) == (7.0, "analytic")
  flops, source = cost.step_flops(fn, x)
  assert source == "unavailable" and np.isnan(flops)


def test_step_flops_prefers_analytic_for_loops():
  b = jnp.ones((8, 8))
  fn = jax.jit(lambda x: jax.lax.fori_loop(0, 10, lambda i, y: y @ b, x))
  assert cost.step_flops(fn, jnp.ones((8, 8)), analytic=10 * 2 * 8 ** 3) == (10240.0, "analytic")
  assert cost.step_flops(fn, jnp.ones((8, 8)))[1] == "xla_cost_analysis"


def _toy_encoder(params, x_BxSxD):
  """A BERT-shaped encoder (matmuls only) to check the analytic count against XLA."""
  h = x_BxSxD
  for layer in params["layers"]:
    q, k, v = (h @ layer[n] for n in ("q", "k", "v"))
    p_BxSxS = jax.nn.softmax(jnp.einsum("bqd,bkd->bqk", q, k), axis=-1)
    h = h + jnp.einsum("bqk,bkd->bqd", p_BxSxS, v) @ layer["o"]
    h = h + jax.nn.gelu(h @ layer["up"]) @ layer["down"]
  return h.mean(axis=1) @ params["head"]


@pytest.mark.parametrize("trainable_from_layer", [0, 1, 2])
def test_analytic_encoder_flops_matches_xla(trainable_from_layer):
  cfg = {"num_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_labels": 3}
  B, S, D, F = 2, 16, 32, 64
  rng = np.random.default_rng(0)
  mk = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  params = {"layers": [{"q": mk(D, D), "k": mk(D, D), "v": mk(D, D), "o": mk(D, D),
                        "up": mk(D, F), "down": mk(F, D)} for _ in range(2)],
            "head": mk(D, 3)}
  x = mk(B, S, D)
  fwd, _ = cost.step_flops(jax.jit(_toy_encoder), params, x)
  want_fwd = cost.analytic_encoder_flops(cfg, B, S, train=False)
  assert 0.9 <= fwd / want_fwd <= 1.15

  def loss(trainable, frozen, x):
    return _toy_encoder({"layers": frozen + trainable[:-1], "head": trainable[-1]}, x).sum()

  trainable = params["layers"][trainable_from_layer:] + [params["head"]]
  frozen = params["layers"][:trainable_from_layer]
  train, _ = cost.step_flops(jax.jit(jax.grad(loss)), trainable, frozen, x)
  want_train = cost.analytic_encoder_flops(cfg, B, S, train=True,
                                           trainable_from_layer=trainable_from_layer)
  assert 0.9 <= train / want_train <= 1.15


def test_analytic_encoder_flops_scaling():
  cfg = {"num_layers": 6, "hidden_size": 384, "intermediate_size": 1536, "num_labels": 3}
  f = functools.partial(cost.analytic_encoder_flops, cfg, 8, 128)
  assert f(train=True) == pytest.approx(3 * f(train=False))
  head_only = f(train=True, trainable_from_layer=6)
  assert f(train=False) < head_only < 1.01 * f(train=False)
  with pytest.raises(ValueError, match="trainable_from_layer"):
    f(train=True, trainable_from_layer=7)


def test_benchmark_latency_keys():
  w = jnp.ones((8, 4))
  out = cost.benchmark_latency(lambda params, batch: batch["x"] @ params,
                               lambda b: {"x": np.ones((b, 8), np.float32)}, params=w,
                               batch_sizes=(1, 4), warmup=1, iters=3)
  for key in ("device", "backend", "batch1_p50_ms", "batch1_p90_ms", "batch4_p50_ms",
              "throughput_eps", "throughput_batch_size"):
    assert key in out, key
  assert out["throughput_batch_size"] == 4
  assert out["device"] == jax.devices()[0].device_kind
  assert out["backend"] == jax.devices()[0].platform and out["host_cpu"]
  assert out["throughput_eps"] > 0 and out["batch1_p90_ms"] >= out["batch1_p50_ms"]
  with pytest.raises(ValueError, match="iters"):
    cost.benchmark_latency(lambda b: b, lambda b: np.ones((b,)), iters=0)


def test_analytic_encoder_flops_matches_xla_on_encoder_classifier():
  # At D=128 the ignored elementwise ops (erf GELU, layer norms, softmax) are ~5-10%; at MiniLM size
  # (D=384, S=128) the analytic count is within ~3% of XLA's.
  from research.models import encoder  # pylint: disable=g-import-not-at-top
  cfg = encoder.EncoderConfig(vocab_size=100, hidden_size=128, num_layers=1, num_heads=4,
                              intermediate_size=512, max_position_embeddings=64, num_labels=3)
  model = encoder.EncoderClassifier(cfg)
  B, S = 1, 64
  ids = jnp.ones((B, S), jnp.int32)
  params = model.init(jax.random.key(0), ids, ids, jnp.zeros_like(ids))["params"]

  def logits_sum(p, ids):
    return model.apply({"params": p}, ids, ids, jnp.zeros_like(ids))["logits"].sum()

  flops, source = cost.step_flops(jax.jit(logits_sum), params, ids)
  assert source == "xla_cost_analysis"
  assert 0.95 <= flops / cost.analytic_encoder_flops(cfg, B, S, train=False) <= 1.2
  train, _ = cost.step_flops(jax.jit(jax.grad(logits_sum)), params, ids)
  assert 0.95 <= train / cost.analytic_encoder_flops(cfg, B, S, train=True) <= 1.2
