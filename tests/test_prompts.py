"""research.data.prompts: instruction tasks for every dataset, k-shot draws, answer parsing."""

import pytest

from research import data
from research.data import prompts


@pytest.fixture(scope="module", params=prompts.TASK_NAMES)
def task_and_data(request, tfds_data_dir):
  spec = prompts._SPECS[request.param]  # pylint: disable=protected-access
  meta = data.info(spec["dataset"], spec["config"], data_dir=tfds_data_dir)
  task = prompts.get_task(request.param, meta.label_names)
  train = data.load(task.dataset, task.config, "train", data_dir=tfds_data_dir)
  test = data.load(task.dataset, task.config, "test", data_dir=tfds_data_dir)
  return task, train, test


def test_messages_ask_for_one_listed_answer(task_and_data):
  task, _, test = task_and_data
  normed = [prompts.normalize(s) for s in task.label_strings]
  assert len(set(normed)) == len(normed) and all(normed)
  messages = prompts.build_messages(task, test[0])
  assert [m["role"] for m in messages] == ["system", "user"]
  user = messages[1]["content"]
  assert "exactly one" in user and all(s in user for s in task.label_strings)
  assert test[0]["text"][:40] in user
  for i, s in enumerate(task.label_strings):
    assert prompts.parse_answer(s, task.label_strings) == i
    assert prompts.parse_answer(f"Answer: {s.title()}.", task.label_strings) == i


def test_k_shot_from_train_only_never_the_asked_example(task_and_data):
  task, train, test = task_and_data
  train_ids = {ex["id"] for ex in train}
  for ex in (test[0], test[1], train[0]):
    shots = prompts.sample_shots(task, train, ex, k=3, seed=0)
    assert len(shots) == 3 and all(s["id"] in train_ids for s in shots)
    assert all(s["id"] != ex["id"] and s["text"] != ex["text"] for s in shots)
    assert shots == prompts.sample_shots(task, train, ex, k=3, seed=0)  # seeded
    messages = prompts.build_messages(task, ex, shots)
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert [m["content"] for m in messages[2:7:2]] == [
        task.label_strings[s["label"]] for s in shots]
    # The instruction once, first; the asked example last, as input only.
    assert messages[1]["content"] == task.user_message(shots[0], 200)
    assert messages[-1]["content"] == task.body(ex, 200)
    assert sum("exactly one" in m["content"] for m in messages) == 1
  if len(task.label_strings) >= 3:  # stratified: k <= C gives k different classes
    assert len({s["label"] for s in prompts.sample_shots(task, train, test[0], k=3, seed=1)}) == 3


def test_readable_labels_and_pubmedqa_context_truncation(tfds_data_dir):
  banking = prompts.get_task("banking77", data.info("banking77", data_dir=tfds_data_dir).label_names)
  assert "card payment wrong exchange rate" in banking.label_strings
  assert "reverted card payment" in banking.label_strings and "refund not showing up" in (
      banking.label_strings)
  assert prompts.get_task("claudette_tos", ("fair", "unfair")).label_strings == ("fair", "unfair")
  pqa = prompts.get_task("pubmedqa_pqal", ("yes", "no", "maybe"))
  ex = {"text": "Does it work?", "contexts": ["word " * 300], "label": 0}
  body = prompts.build_messages(pqa, ex, context_words=50)[1]["content"]
  abstract = body.split("Abstract: ")[1].split("\n")[0].split()
  assert abstract == ["word"] * 50 + ["..."] and body.endswith("Question: Does it work?")


@pytest.mark.parametrize("text,want", [
    ("positive", 2), ("Positive.", 2), ("  NEGATIVE!  ", 0), ("The sentiment is neutral.", 1),
    ("Sentiment: positive\nBecause sales rose.", 2), ("neutral, leaning positive", 1),
    ("I think the answer is negative", 0), ("The sentence is positive", 2),
    ("It could be positive or negative", None), ("", None), ("I cannot tell.", None),
    ("The sentiment of this sentence from financial news", None),
    ("The sentiment of this sentence is neutral, as it expresses no positive or negative view", 1),
    ("No label here. Then: positive and negative", None),
])
def test_parse_answer_sentiment(text, want):
  assert prompts.parse_answer(text, ("negative", "neutral", "positive")) == want


def test_parse_answer_overlapping_labels():
  assert prompts.parse_answer("This clause is unfair.", ("fair", "unfair")) == 1
  assert prompts.parse_answer("Fair", ("fair", "unfair")) == 0
  assert prompts.parse_answer("This clause is not fair to the consumer.", ("fair", "unfair")) is None
  assert prompts.parse_answer("This clause isn't entirely fair. It is unfair to the consumer",
                              ("fair", "unfair")) == 1
  assert prompts.parse_answer("Not positive.", ("negative", "neutral", "positive")) is None
  intents = ("top up failed", "top up", "pending top up")
  assert prompts.parse_answer("Intent: pending_top_up", intents) == 2
  assert prompts.parse_answer("Probably top up failed.", intents) == 0
  assert prompts.parse_answer("study design", ("outcome", "study design", "other")) == 1


def test_bad_inputs_name_the_problem():
  with pytest.raises(ValueError, match="unknown prompt task 'nope'"):
    prompts.get_task("nope")
  with pytest.raises(ValueError, match="not distinct"):
    prompts.get_task("claudette_tos", ("Fair", "fair"))
  task = prompts.get_task("claudette_tos", ("fair", "unfair"))
  with pytest.raises(ValueError, match="k=5"):
    prompts.sample_shots(task, [{"id": "a", "text": "x", "label": 0}], {"id": "b", "text": "y"},
                         k=5, seed=0)
