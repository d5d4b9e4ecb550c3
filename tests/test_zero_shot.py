"""research.zero_shot: label scoring (toy logits, shared prefix), greedy decoding, resumable driver."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import zero_shot as zero_shot_config
from research import zero_shot
from research.data import prompts
from research.models import decoder
from tests.test_gguf_tokenizer import write_tiny_gguf

V = 6
HIGH = 5.0 - np.log(np.exp(5.0) + V - 1)   # log p of the favoured next token
LOW = 0.0 - np.log(np.exp(5.0) + V - 1)


def next_token_logits(ids_BxL, mask_BxL):
  """Favours ids[t] + 1 (mod V) after ids[t]; padding slots favour token 0 strongly (a trap)."""
  logits = 5.0 * jax.nn.one_hot((ids_BxL + 1) % V, V)
  trap = 100.0 * jax.nn.one_hot(jnp.zeros_like(ids_BxL), V)
  return jnp.where(mask_BxL[..., None] > 0, logits, trap)


def test_score_options_toy_logits_picks_the_continuation():
  prompts_ids = [[0, 1, 2], [4]]
  options = [[[3, 4], [4, 4], [3]], [[5, 0], [1, 1], [5]]]
  sums, counts = zero_shot.score_options(next_token_logits, prompts_ids, options, batch_size=4)
  np.testing.assert_allclose(sums, [[2 * HIGH, 2 * LOW, HIGH], [2 * HIGH, 2 * LOW, HIGH]],
                             rtol=1e-5)
  np.testing.assert_array_equal(counts, [[2, 2, 1], [2, 2, 1]])
  assert (sums / counts).argmax(1).tolist() == [0, 0]  # length-normalised: the 2-token match ties
  # Padding rows/slots never leak in: same numbers one row per call, or padded to 64.
  for batch_size, multiple in ((1, 1), (5, 64)):
    again, _ = zero_shot.score_options(next_token_logits, prompts_ids, options,
                                       batch_size=batch_size, length_multiple=multiple)
    np.testing.assert_allclose(again, sums, rtol=1e-6)


def test_score_options_bad_input():
  with pytest.raises(ValueError, match="option 1 of prompt 0 has no tokens"):
    zero_shot.score_options(next_token_logits, [[1]], [[[2], []]])


def tiny_lm(vocab=260, **kw):
  cfg = decoder.DecoderConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=4,
                              num_kv_heads=2, head_dim=8, intermediate_size=64,
                              max_position_embeddings=1024)
  params = decoder.init_params(cfg, jax.random.PRNGKey(0))
  return zero_shot.DecoderLM(cfg, params, **kw)


def test_shared_prefix_scoring_and_greedy_match_full_recompute():
  lm = tiny_lm(prompt_buckets=(16, 32), extra_slots=16, option_chunk=2)
  prompt = list(range(10, 30))             # 20 tokens: left-padded to 32
  options = [[5], [7, 8, 9], [100, 3], [42, 42, 42, 42]]
  shared = lm.score(lm.prefill(prompt), options)
  full, _ = zero_shot.score_options(lm.logits_fn, [prompt], [options], batch_size=4)
  np.testing.assert_allclose(shared, full[0], atol=2e-4)
  state = lm.prefill(prompt)
  got = lm.greedy(state, 6, stop_ids=())
  ids = list(prompt)
  for _ in range(6):
    logits = lm.logits_fn(jnp.array([ids]), jnp.ones((1, len(ids)), jnp.int32))
    ids.append(int(jnp.argmax(logits[0, -1])))
  assert got == ids[len(prompt):]
  assert lm.greedy(state, 6, stop_ids=(got[0],)) == []            # stops before a stop id
  new = [j for j in range(1, len(got)) if got[j] not in got[:j]]
  if new:
    assert lm.greedy(state, 6, stop_ids=(got[new[0]],)) == got[:new[0]]
  np.testing.assert_allclose(lm.score(state, options), shared, atol=1e-5)  # state reusable
  with pytest.raises(ValueError, match="extra_slots"):
    lm.greedy(state, 40, stop_ids=())
  assert lm.timing.as_dict()["prefill_tokens_per_s"] > 0


def test_generation_metrics_count_unparseable_as_wrong():
  m = zero_shot.generation_metrics([0, None, 1, None], [0, 1, 1, 0], ("a", "b"))
  assert m["accuracy"] == 0.5 and m["unparseable_rate"] == 0.5
  assert m["macro_f1"] == pytest.approx(np.mean([2 / 3, 2 / 3]))


@pytest.fixture
def toy_driver(tmp_path, monkeypatch):
  """run() on a tiny random decoder + tiny GGUF tokenizer and fake data; counts model runs."""
  from research.checkpoints import gguf_tokenizer  # pylint: disable=g-import-not-at-top
  tok = gguf_tokenizer.load_tokenizer(write_tiny_gguf(tmp_path / "tok.gguf"))
  calls = {"load_model": 0, "cells": []}
  names = {"phrasebank_allagree": ("negative", "neutral", "positive"),
           "claudette_tos": ("fair", "unfair")}

  def fake_examples(task, split, data_cfg):
    del data_cfg
    c = len(names[task.name])
    return [{"id": f"{split}-{i}", "text": f"{split} text {i}", "label": i % c} for i in range(8)]

  def fake_model(source, model_cfg):
    calls["load_model"] += 1
    return tok, tiny_lm(prompt_buckets=model_cfg.prompt_buckets,
                        extra_slots=model_cfg.extra_slots, option_chunk=model_cfg.option_chunk)

  real_eval = zero_shot.evaluate_cell

  def counting_eval(lm, tokenizer, task, examples, train, **kw):
    calls["cells"].append((task.name, kw["k"]))
    return real_eval(lm, tokenizer, task, examples, train, **kw)

  monkeypatch.setattr(zero_shot, "load_task", lambda n: prompts.get_task(n, names[n]))
  monkeypatch.setattr(zero_shot, "load_examples", fake_examples)
  monkeypatch.setattr(zero_shot, "load_model", fake_model)
  monkeypatch.setattr(zero_shot, "evaluate_cell", counting_eval)
  config = zero_shot_config.get_config("tiny")
  config.models = ("toy",)
  config.tasks = tuple(names)
  config.shots = (0, 1)
  config.n_eval_default = 3
  config.max_new_tokens = 4
  config.results_dir = str(tmp_path / "results")
  config.compile_cache_dir = ""
  config.progress = False
  return config, calls


def test_driver_resumes_and_reruns_only_changed_cells(toy_driver):
  config, calls = toy_driver
  records = zero_shot.run(config)
  assert len(records) == 4 and calls["load_model"] == 1 and len(calls["cells"]) == 4
  cells = sorted((p.name for p in (zero_shot.pathlib.Path(config.results_dir) / "cells").iterdir()))
  assert cells == ["toy__claudette_tos__k0.json", "toy__claudette_tos__k1.json",
                   "toy__phrasebank_allagree__k0.json", "toy__phrasebank_allagree__k1.json"]
  rec = records[1]
  assert rec["n"] == 3 and rec["k"] == 1 and all(len(r["shot_ids"]) == 1 for r in rec["predictions"])
  assert all(s.startswith("train-") for r in rec["predictions"] for s in r["shot_ids"])
  assert set(rec["metrics"]) == {"scoring", "scoring_length_normalised", "generation", "majority"}
  table = (zero_shot.pathlib.Path(config.results_dir) / "table.md").read_text()
  assert table.count("| toy |") == 4

  zero_shot.run(config)                                    # everything finished: nothing runs
  assert calls["load_model"] == 1 and len(calls["cells"]) == 4

  config.n_eval = {"claudette_tos": 2}                     # one task's settings changed
  records = zero_shot.run(config)
  assert calls["cells"][4:] == [("claudette_tos", 0), ("claudette_tos", 1)]
  assert [r["n"] for r in records] == [3, 3, 2, 2]

  config.shots = (1,)                                      # a narrower run still tables all cells
  assert len(zero_shot.run(config)) == 2 and len(calls["cells"]) == 6
  table = (zero_shot.pathlib.Path(config.results_dir) / "table.md").read_text()
  assert table.count("| toy |") == 4


def test_driver_reparses_stored_answers_when_the_parser_changes(toy_driver, monkeypatch):
  config, calls = toy_driver
  zero_shot.run(config)
  path = zero_shot.pathlib.Path(config.results_dir) / "cells" / "toy__claudette_tos__k0.json"
  rec = json.loads(path.read_text())
  rec["parser_version"] = -1
  rec["predictions"][0]["answer"] = "Unfair."
  path.write_text(json.dumps(rec))
  zero_shot.run(config)
  rec = json.loads(path.read_text())
  assert len(calls["cells"]) == 4                          # no model run
  assert rec["parser_version"] == prompts.PARSER_VERSION and rec["predictions"][0]["gen_pred"] == 1


def test_select_subset_is_seeded_sorted_and_limits_nest():
  examples = [{"id": i} for i in range(50)]
  full = zero_shot.select_subset(examples, 20, seed=0)
  assert len(full) == 20 and full == zero_shot.select_subset(examples, 20, seed=0)
  assert [e["id"] for e in full] == sorted(e["id"] for e in full)
  small = zero_shot.select_subset(examples, 20, seed=0, limit=5)
  assert len(small) == 5 and all(e in full for e in small)
  assert zero_shot.select_subset(examples, 0, seed=0) == examples
  assert len(zero_shot.select_subset(examples, 0, seed=0, limit=7)) == 7


def test_prefix_greedy_matches_models_generate():
  lm = tiny_lm(prompt_buckets=(16, 32), extra_slots=16)
  prompts_ids = [list(range(10, 30)), list(range(40, 45))]
  mine = [lm.greedy(lm.prefill(p), 6, stop_ids=(7,)) for p in prompts_ids]
  assert lm.generate_batch(prompts_ids, 6, stop_ids=(7,)) == mine
