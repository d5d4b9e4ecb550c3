"""Encoder parity with PyTorch HF BertModel (golden fixture), shapes, masking, build_model."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.checkpoints import hf
from research.models import encoder
from research.models import registry

GOLDEN = pathlib.Path(__file__).parent / "fixtures" / "minilm_golden.npz"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TINY = {"vocab_size": 64, "hidden_size": 16, "num_layers": 2, "num_heads": 4,
        "intermediate_size": 32, "max_position_embeddings": 32}

# Tolerances. float32 measured (jax 0.10.2 CPU vs torch 2.13 CPU): max |diff| 2.9e-6 on the last
# hidden state, <= 4.3e-6 on every layer, sentence-embedding cosine >= 0.99999994.
# bfloat16 compute (f32 params/accumulation/LN/softmax) measured: max |diff| 1.6e-2 on the last
# hidden state, <= 1.6e-2 on every layer, cosine >= 0.999984; tolerances give ~3x headroom.
TOL = {"float32": dict(atol=1e-4, cos=0.99999), "bfloat16": dict(atol=5e-2, cos=0.9999)}


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(GOLDEN))


@pytest.fixture(scope="module")
def minilm():
  return registry.load_hf(MINILM)


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_parity_with_hf_bert(golden, minilm, dtype):
  cfg, params = minilm
  out = _run(encoder.Encoder(cfg.replace(dtype=dtype)), params["encoder"], golden["input_ids"],
             golden["attention_mask"], golden["token_type_ids"], output_hidden_states=True)
  tol = TOL[dtype]
  real = golden["attention_mask"].astype(bool)
  # Last hidden state: every non-padding position of every row.
  last = np.asarray(out["last_hidden_state"])
  assert last.dtype == np.float32
  np.testing.assert_array_less(np.abs(last - golden["last_hidden_state"])[real], tol["atol"])
  # Every layer (embeddings output first): the first/last 3 real positions of each row.
  hs = np.stack([np.asarray(h) for h in out["hidden_states"]])
  assert hs.shape[0] == cfg.num_layers + 1
  sel = np.take_along_axis(hs, golden["positions"][None, :, :, None], axis=2)
  diff_per_layer = np.abs(sel - golden["hidden_states"]).max(axis=(1, 2, 3))
  assert (diff_per_layer <= tol["atol"]).all(), diff_per_layer
  # Normalised mean-pooled sentence embedding (all-MiniLM-L6-v2's sentence vector).
  emb = _unit(encoder.mean_pool(out["last_hidden_state"], golden["attention_mask"]))
  cos = (emb * _unit(golden["sentence_embedding"])).sum(-1)
  assert cos.min() >= tol["cos"], cos
  np.testing.assert_allclose(out["pooler_output"], golden["pooler_output"], atol=tol["atol"])


def _run(model, params, *args, **kw):
  """Jitted `model.apply` (eager dispatch of every op is much slower than one compile)."""
  rngs = kw.pop("rngs", None)
  fn = jax.jit(functools.partial(model.apply, **kw))
  return fn({"params": params}, *args, rngs=rngs)


@pytest.fixture(scope="module")
def tiny():
  """(model, params, cfg, fwd): a random 2-layer model; fwd returns every output, jitted once."""
  model, params, cfg = registry.build_model(
      "bert", None, num_labels=3, dtype="float32", pooling="mean", overrides=TINY,
      random_init=True, rng=jax.random.PRNGKey(1))
  fwd = jax.jit(lambda p, *a: model.apply({"params": p}, *a, output_hidden_states=True,
                                          output_attentions=True))
  return model, params, cfg, fwd


def _batch(B=3, L=7, seed=0):
  ids = np.random.default_rng(seed).integers(1, 64, (B, L)).astype(np.int32)
  mask = np.ones((B, L), np.int32)
  mask[1, 4:] = 0
  mask[2, 2:] = 0
  ids[mask == 0] = 0
  return ids, mask, np.zeros_like(ids)


def test_random_init_with_overrides_shapes(tiny):
  _, params, cfg, fwd = tiny
  assert (cfg.num_layers, cfg.hidden_size, cfg.vocab_size) == (2, 16, 64)
  assert sorted(params["encoder"]) == ["embeddings", "layer_0", "layer_1", "pooler"]
  assert params["head"]["kernel"].shape == (16, 3)
  assert params["encoder"]["layer_1"]["mlp"]["up"]["kernel"].shape == (16, 32)
  out = fwd(params, *_batch())
  assert out["logits"].shape == (3, 3) and out["logits"].dtype == jnp.float32
  assert out["pooled"].shape == (3, 16)
  assert out["last_hidden_state"].shape == (3, 7, 16)
  assert len(out["hidden_states"]) == 3
  assert all(h.shape == (3, 7, 16) for h in out["hidden_states"])
  assert len(out["attentions"]) == 2
  assert all(a.shape == (3, 4, 7, 7) and a.dtype == jnp.float32 for a in out["attentions"])
  np.testing.assert_array_equal(out["hidden_states"][-1], out["last_hidden_state"])


def test_outputs_only_when_asked(tiny):
  model, params, _, _ = tiny
  ids, mask, tt = _batch()
  out = jax.eval_shape(lambda p: model.apply({"params": p}, ids, mask, tt), params)
  assert sorted(out) == ["last_hidden_state", "logits", "pooled", "pooler_output"]


def test_attention_rows_sum_to_one_and_skip_padding(tiny):
  _, params, _, fwd = tiny
  ids, mask, tt = _batch()
  out = fwd(params, ids, mask, tt)
  for probs in out["attentions"]:
    probs = np.asarray(probs)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    pad_keys = np.broadcast_to((mask == 0)[:, None, None, :], probs.shape)
    assert probs[pad_keys].max() == 0.0


def test_padding_tokens_do_not_change_real_outputs(tiny):
  _, params, _, fwd = tiny
  ids, mask, tt = _batch()
  other = np.where(mask == 0, 5, ids).astype(np.int32)  # different ids at padding positions
  a, b = fwd(params, ids, mask, tt), fwd(params, other, mask, tt)
  real = mask.astype(bool)
  # Covers every pooling: "mean" (logits/pooled), "cls" (position 0), "pooler" (pooler_output).
  np.testing.assert_allclose(np.asarray(a["last_hidden_state"])[real],
                             np.asarray(b["last_hidden_state"])[real], atol=1e-6)
  for key in ("logits", "pooled", "pooler_output"):
    np.testing.assert_allclose(a[key], b[key], atol=1e-6)
  assert not np.allclose(np.asarray(a["last_hidden_state"])[~real],
                         np.asarray(b["last_hidden_state"])[~real])


def test_mean_pool_ignores_padding():
  h = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
  mask = jnp.array([[1, 1, 0], [1, 0, 0]])
  np.testing.assert_allclose(encoder.mean_pool(h, mask), [[1.0, 2.0], [6.0, 7.0]])


def test_dropout_only_when_not_deterministic(tiny):
  model, params, _, fwd = tiny
  ids, mask, tt = _batch()
  det = fwd(params, ids, mask, tt)["logits"]
  np.testing.assert_array_equal(det, fwd(params, ids, mask, tt)["logits"])
  drop = _run(model, params, ids, mask, tt, deterministic=False,
              rngs={"dropout": jax.random.PRNGKey(3)})["logits"]
  assert not np.allclose(det, drop)


def test_build_model_pretrained_keeps_weights_and_adds_head(minilm):
  model, params, cfg = registry.build_model(
      "bert", MINILM, num_labels=5, dtype="bfloat16", pooling="cls",
      overrides={"num_layers": 0, "hidden_size": 0}, dropout=0.0)
  assert (cfg.num_labels, cfg.dtype, cfg.pooling, cfg.hidden_dropout) == (5, "bfloat16", "cls", 0.)
  assert isinstance(model, encoder.EncoderClassifier)
  np.testing.assert_array_equal(params["encoder"]["layer_5"]["mlp"]["down"]["kernel"],
                                minilm[1]["encoder"]["layer_5"]["mlp"]["down"]["kernel"])
  assert params["head"]["kernel"].shape == (384, 5)


def test_build_model_rejects_bad_overrides():
  with pytest.raises(ValueError, match="change parameter shapes.*random_init"):
    registry.build_model("bert", MINILM, num_labels=2, overrides={"num_layers": 2})
  with pytest.raises(ValueError, match="Unknown model override 'num_layer'"):
    registry.build_model("bert", None, num_labels=2, overrides={"num_layer": 2},
                         random_init=True)
  with pytest.raises(KeyError, match="Unknown model family 'gpt'"):
    registry.get_family("gpt")


def test_config_hf_dict_round_trip_and_validation():
  cfg = encoder.EncoderConfig(**TINY, num_labels=4, hidden_act="gelu_new")
  back = encoder.EncoderConfig.from_hf_dict(cfg.to_hf_dict())
  assert back == cfg
  with pytest.raises(ValueError, match="pooling='max'"):
    cfg.replace(pooling="max")
  with pytest.raises(ValueError, match="not divisible"):
    cfg.replace(num_heads=5)
