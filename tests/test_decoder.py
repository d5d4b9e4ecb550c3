"""Decoder (Llama/Qwen2) properties on tiny random models, HF round trip, the Qwen2 golden."""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.checkpoints import hf_decoder
from research.models import decoder
from tests.fixtures import tiny_qwen2

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def tiny(**kw):
  base = dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
              head_dim=8, intermediate_size=48, max_position_embeddings=64,
              initializer_range=0.2, rope_theta=10000.0)
  return decoder.DecoderConfig(**{**base, **kw})


def params_for(cfg, seed=0):
  return decoder.init_params(cfg, jax.random.PRNGKey(seed))


@functools.lru_cache(maxsize=None)
def _apply(cfg, output_hidden_states):
  return jax.jit(lambda p, i, m, c: decoder.Decoder(cfg).apply(
      {"params": p}, i, m, output_hidden_states=output_hidden_states, cache=c))


def logits(cfg, params, ids, mask=None, output_hidden_states=False, cache=None):
  """Jitted apply (one compile per config; eager dispatch is slower on these tiny models)."""
  ids = jnp.asarray(ids)
  mask = jnp.ones_like(ids) if mask is None else jnp.asarray(mask)
  return _apply(cfg, output_hidden_states)(params, ids, mask, cache)


def ids_for(cfg, shape, seed=1):
  return np.random.default_rng(seed).integers(0, cfg.vocab_size, shape).astype(np.int32)


def test_param_layout_tied_untied_bias():
  cfg = tiny()
  p = params_for(cfg)
  assert set(p) == {"decoder"}
  dec = p["decoder"]
  assert set(dec) == {"embed", "final_norm", "layer_0", "layer_1"}
  layer = dec["layer_0"]
  assert set(layer) == {"attn_norm", "attn", "mlp_norm", "mlp"}
  assert layer["attn"]["q"]["kernel"].shape == (32, 32)
  assert layer["attn"]["k"]["kernel"].shape == (32, 16)
  assert layer["attn"]["o"]["kernel"].shape == (32, 32)
  assert layer["mlp"]["down"]["kernel"].shape == (48, 32)
  assert "bias" not in layer["attn"]["q"]
  untied = params_for(cfg.replace(tie_word_embeddings=False, attention_bias=True, arch="qwen2"))
  assert untied["lm_head"]["kernel"].shape == (32, 97)
  assert untied["decoder"]["layer_1"]["attn"]["v"]["bias"].shape == (16,)
  assert "bias" not in untied["decoder"]["layer_1"]["attn"]["o"]
  for leaf in jax.tree_util.tree_leaves(untied):
    assert leaf.dtype == jnp.float32


def test_output_shapes_and_hidden_states():
  cfg = tiny()
  out = logits(cfg, params_for(cfg), ids_for(cfg, (2, 7)), output_hidden_states=True)
  assert out["logits"].shape == (2, 7, 97) and out["logits"].dtype == jnp.float32
  assert len(out["hidden_states"]) == cfg.num_layers + 1
  assert all(h.shape == (2, 7, 32) for h in out["hidden_states"])
  np.testing.assert_array_equal(out["hidden_states"][-1], out["last_hidden_state"])
  assert "cache" not in out
  assert "hidden_states" not in logits(cfg, params_for(cfg), ids_for(cfg, (2, 7)))


def test_causal_future_tokens_do_not_change_past():
  cfg = tiny()
  p = params_for(cfg)
  a = ids_for(cfg, (2, 9))
  b = a.copy()
  b[:, 5:] = ids_for(cfg, (2, 4), seed=7)
  la, lb = logits(cfg, p, a)["logits"], logits(cfg, p, b)["logits"]
  np.testing.assert_allclose(la[:, :5], lb[:, :5], atol=1e-6)
  assert np.abs(la[:, 5:] - lb[:, 5:]).max() > 1e-3


def test_left_padding_equals_no_padding():
  cfg = tiny()
  p = params_for(cfg)
  ids = ids_for(cfg, (1, 6))
  padded = np.concatenate([np.zeros((1, 3), np.int32), ids], 1)
  mask = np.array([[0, 0, 0] + [1] * 6])
  np.testing.assert_allclose(logits(cfg, p, padded, mask)["logits"][:, 3:],
                             logits(cfg, p, ids)["logits"], atol=1e-5)


def test_right_padding_keeps_real_tokens():
  cfg = tiny()
  p = params_for(cfg)
  ids = ids_for(cfg, (1, 6))
  padded = np.concatenate([ids, np.zeros((1, 2), np.int32)], 1)
  mask = np.array([[1] * 6 + [0, 0]])
  np.testing.assert_allclose(logits(cfg, p, padded, mask)["logits"][:, :6],
                             logits(cfg, p, ids)["logits"], atol=1e-5)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_kv_cache_decode_equals_full_forward(kv_heads):
  cfg = tiny(num_kv_heads=kv_heads)
  p = params_for(cfg)
  ids = ids_for(cfg, (2, 8))
  mask = np.ones((2, 8), np.int32)
  mask[1, :2] = 0  # row 1 left padded
  full = logits(cfg, p, ids, mask)["logits"]
  cache = decoder.init_cache(cfg, 2, 12)
  out = logits(cfg, p, ids[:, :5], mask[:, :5], cache=cache)
  steps = [out["logits"]]
  for t in range(5, 8):
    out = logits(cfg, p, ids[:, t:t + 1], mask[:, t:t + 1], cache=out["cache"])
    steps.append(out["logits"])
  got = np.concatenate(steps, 1)
  np.testing.assert_allclose(got[0], full[0], atol=1e-5)
  np.testing.assert_allclose(got[1, 2:], full[1, 2:], atol=1e-5)
  assert int(out["cache"]["index"]) == 8
  np.testing.assert_array_equal(out["cache"]["positions"], [8, 6])


def test_gqa_equals_mha_with_repeated_kv():
  gqa = tiny(num_kv_heads=2)
  mha = gqa.replace(num_kv_heads=4)
  p = params_for(gqa)
  p_mha = jax.tree_util.tree_map(lambda x: x, p)
  for i in range(gqa.num_layers):
    attn = p_mha["decoder"][f"layer_{i}"]["attn"]
    for name in ("k", "v"):  # KV head j serves query heads 2j, 2j+1
      w = attn[name]["kernel"].reshape(32, 2, 1, 8)
      attn[name] = {"kernel": jnp.broadcast_to(w, (32, 2, 2, 8)).reshape(32, 32)}
  ids = ids_for(gqa, (2, 7))
  np.testing.assert_allclose(logits(gqa, p, ids)["logits"], logits(mha, p_mha, ids)["logits"],
                             atol=1e-5)


def test_tied_equals_untied_with_transposed_embedding():
  tied = tiny()
  p = params_for(tied)
  untied = tied.replace(tie_word_embeddings=False)
  pu = {**p, "lm_head": {"kernel": p["decoder"]["embed"]["embedding"].T}}
  ids = ids_for(tied, (2, 5))
  np.testing.assert_allclose(logits(tied, p, ids)["logits"], logits(untied, pu, ids)["logits"],
                             atol=1e-6)


def test_qwen2_bias_path():
  qcfg = tiny(attention_bias=True, arch="qwen2")
  p = params_for(qcfg)
  ids = ids_for(qcfg, (2, 5))
  base = params_for(tiny())  # same init order: zero biases == the bias-free model
  np.testing.assert_allclose(logits(qcfg, p, ids)["logits"], logits(tiny(), base, ids)["logits"],
                             atol=1e-6)
  p["decoder"]["layer_0"]["attn"]["k"]["bias"] = jnp.full((16,), 0.5)
  assert np.abs(logits(qcfg, p, ids)["logits"] - logits(tiny(), base, ids)["logits"]).max() > 1e-3


def test_bfloat16_compute_close_to_float32():
  cfg = tiny()
  p = params_for(cfg)
  ids = ids_for(cfg, (2, 6))
  f32 = logits(cfg, p, ids)["logits"]
  bf16 = logits(cfg.replace(dtype="bfloat16"), p, ids)["logits"]
  assert bf16.dtype == jnp.float32
  assert np.abs(bf16 - f32).max() < 0.1 * np.abs(f32).max()


def test_config_hf_dict_round_trip_and_rope_parameters():
  cfg = tiny(tie_word_embeddings=False, attention_bias=True, arch="qwen2", eos_token_id=5)
  assert decoder.DecoderConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
  d = cfg.to_hf_dict()
  d["rope_parameters"] = {"rope_theta": 1e6, "rope_type": "default"}
  del d["rope_theta"]
  assert decoder.DecoderConfig.from_hf_dict(d).rope_theta == 1e6
  with pytest.raises(ValueError, match="hidden_act"):
    decoder.DecoderConfig.from_hf_dict({**d, "hidden_act": "gelu"})


def test_llama3_rope_scaling_keeps_high_and_divides_low_frequencies():
  cfg = tiny(head_dim=64, hidden_size=256, rope_theta=500000.0)
  plain = decoder.rope_inv_freq(cfg)
  sc = (("factor", 32.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
        ("original_max_position_embeddings", 8192), ("rope_type", "llama3"))
  scaled = decoder.rope_inv_freq(cfg.replace(rope_scaling=sc))
  np.testing.assert_allclose(scaled[:4], plain[:4])  # short wavelengths untouched
  np.testing.assert_allclose(scaled[-4:], plain[-4:] / 32.0, rtol=1e-6)


def test_hf_round_trip_identical(tmp_path):
  cfg = tiny(tie_word_embeddings=False, attention_bias=True, arch="qwen2")
  p = jax.tree_util.tree_map(np.asarray, params_for(cfg, seed=4))
  hf_decoder.save_hf_decoder(p, cfg, tmp_path)
  cfg2, p2 = hf_decoder.load_hf_decoder(tmp_path)
  assert cfg2 == cfg
  jax.tree_util.tree_map(np.testing.assert_array_equal, p, p2)
  ids = ids_for(cfg, (2, 6))
  np.testing.assert_array_equal(logits(cfg, p, ids)["logits"], logits(cfg2, p2, ids)["logits"])
  cfg_t = tiny()
  hf_decoder.save_hf_decoder(params_for(cfg_t), cfg_t, tmp_path / "tied")
  assert "lm_head" not in hf_decoder.load_hf_decoder(tmp_path / "tied")[1]


def test_hf_shape_mismatch_is_reported(tmp_path):
  cfg = tiny()
  hf_decoder.save_hf_decoder(params_for(cfg), cfg, tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
  with pytest.raises(ValueError, match="mlp.gate_proj.weight.*shape"):
    hf_decoder.load_hf_decoder(tmp_path)


def test_qwen2_golden_logits_match_transformers(tmp_path):
  golden = np.load(FIXTURES / "qwen2_tiny_golden.npz")
  cfg, p = hf_decoder.load_hf_decoder(tiny_qwen2.write(tmp_path / "qwen2_tiny"))
  assert cfg.arch == "qwen2" and cfg.attention_bias and not cfg.tie_word_embeddings
  out = logits(cfg, p, golden["input_ids"])["logits"]
  np.testing.assert_allclose(out, golden["logits"], atol=1e-4, rtol=0)


def test_slice_layers_copies_and_renumbers():
  cfg = tiny(num_layers=4)
  p = params_for(cfg)
  sp, scfg = decoder.slice_layers(p, cfg, [1, 3])
  assert scfg.num_layers == 2 and set(sp["decoder"]) == {"embed", "final_norm", "layer_0",
                                                          "layer_1"}
  np.testing.assert_array_equal(sp["decoder"]["layer_1"]["mlp"]["up"]["kernel"],
                                p["decoder"]["layer_3"]["mlp"]["up"]["kernel"])
  assert logits(scfg, sp, ids_for(cfg, (1, 4)))["logits"].shape == (1, 4, 97)
  with pytest.raises(ValueError, match="slice_layers"):
    decoder.slice_layers(p, cfg, [4])


def test_layer_paths_cover_every_param():
  cfg = tiny(tie_word_embeddings=False)
  info = decoder.layer_paths(cfg)
  prefixes = info["embeddings"] + info["layers"] + info["norms"] + info["head"]
  flat = jax.tree_util.tree_flatten_with_path(params_for(cfg))[0]
  for path, _ in flat:
    name = "/".join(k.key for k in path)
    assert any(name.startswith(pre + "/") for pre in prefixes), name
  assert info["head"] == ["lm_head"] and decoder.layer_paths(tiny())["head"] == ["decoder/embed"]


def test_analytic_flops_close_to_xla():
  cfg = tiny(vocab_size=512, hidden_size=128, num_heads=4, num_kv_heads=2, head_dim=32,
             intermediate_size=256)
  p = params_for(cfg)
  ids = jnp.zeros((2, 32), jnp.int32)
  fn = jax.jit(lambda p, i: decoder.Decoder(cfg).apply({"params": p}, i)["logits"])
  cost = fn.lower(p, ids).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic = decoder.analytic_flops(cfg, 2, 32, train=False)
  assert abs(analytic / cost["flops"] - 1) < 0.15
  assert decoder.analytic_flops(cfg, 2, 32, train=True) == pytest.approx(3 * analytic)


def test_explicit_positions_match_default_and_shift_changes_logits():
  cfg = tiny()
  p = params_for(cfg)
  ids = ids_for(cfg, (2, 6))
  m = decoder.Decoder(cfg)
  pos = np.tile(np.arange(6, dtype=np.int32), (2, 1))
  np.testing.assert_allclose(m.apply({"params": p}, ids, positions_BxL=pos)["logits"],
                             logits(cfg, p, ids)["logits"], atol=1e-5)
  # RoPE is relative: a shift keeps attention scores (up to rounding), so logits barely move...
  shifted = m.apply({"params": p}, ids, positions_BxL=pos + 5)["logits"]
  np.testing.assert_allclose(shifted, logits(cfg, p, ids)["logits"], atol=1e-3)
  # ...while permuting positions does change them.
  assert np.abs(m.apply({"params": p}, ids, positions_BxL=pos[:, ::-1].copy())["logits"]
                - logits(cfg, p, ids)["logits"]).max() > 1e-3


def test_hf_sharded_bf16_folder(tmp_path):
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  cfg = tiny()
  p = jax.tree_util.tree_map(np.asarray, params_for(cfg))
  config, tensors = hf_decoder.decoder_to_hf(p, cfg)
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[:5],
            "model-00002-of-00002.safetensors": names[5:]}
  for shard, keys in shards.items():  # real checkpoints are mostly bf16
    save_file({k: tensors[k].astype(ml_dtypes.bfloat16) for k in keys}, str(tmp_path / shard))
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {k: s for s, keys in shards.items() for k in keys}}))
  (tmp_path / "config.json").write_text(json.dumps(config))
  cfg2, p2 = hf_decoder.load_hf_decoder(tmp_path)
  assert cfg2 == cfg
  bf = lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(bf(a), b), p, p2)


@pytest.mark.parametrize("tied", [True, False])
def test_last_logits_only(tied):
  cfg = tiny(tie_word_embeddings=tied)
  p = params_for(cfg)
  ids = ids_for(cfg, (2, 6))
  m = decoder.Decoder(cfg)
  last = m.apply({"params": p}, ids, last_logits_only=True)["logits"]
  assert last.shape == (2, 1, 97)
  np.testing.assert_allclose(last[:, 0], logits(cfg, p, ids)["logits"][:, -1], atol=1e-5)
