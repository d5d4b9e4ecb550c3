"""Instruction versions of the domain datasets: chat prompts, answer strings, k-shot turns, parsing.

    task = prompts.get_task("phrasebank_allagree")
    messages = prompts.build_messages(task, example, shots=prompts.sample_shots(task, train, example,
                                                                                k=3, seed=0))
    task.label_strings[example["label"]]        # what the model should answer, e.g. "positive"
    prompts.parse_answer("Positive.", task.label_strings)   # -> 2

The system + user messages ask for exactly one answer from a listed set; k-shot examples (TRAIN only)
come as earlier user/assistant turns. Prompt wording was written once, not tuned on any split.
"""

from __future__ import annotations

import dataclasses
import random
import re
import zlib
from typing import Any, Callable, Sequence

Example = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class PromptTask:
  """One dataset config as a chat instruction task."""
  name: str
  dataset: str
  config: str | None
  prompt_name: str                        # bump when the wording changes (it is in the records)
  system: str
  instruction: str                        # may use {options}
  input_label: str                        # "Sentence", "Message", ...
  label_strings: tuple[str, ...]          # answer per class index, distinct after normalising
  format_input: Callable[[Example, int], str] | None = None   # (example, context_words) -> text

  def body(self, example: Example, context_words: int) -> str:
    return (self.format_input(example, context_words) if self.format_input
            else f"{self.input_label}: {example['text']}")

  def user_message(self, example: Example, context_words: int) -> str:
    """The instruction (with the listed answers) followed by the example's input."""
    options = ", ".join(self.label_strings)
    return f"{self.instruction.format(options=options)}\n\n{self.body(example, context_words)}"


def readable_label(name: str) -> str:
  """'card_payment_wrong_exchange_rate' -> 'card payment wrong exchange rate'."""
  return re.sub(r"\s+", " ", re.sub(r"[_?]", " ", name)).strip().lower()


def truncate_words(text: str, max_words: int) -> str:
  words = text.split()
  return text if len(words) <= max_words else " ".join(words[:max_words]) + " ..."


def _pubmedqa_input(example: Example, context_words: int) -> str:
  context = " ".join(example.get("contexts") or [example.get("text_pair", "")])
  return (f"Abstract: {truncate_words(context, context_words)}\n\n"
          f"Question: {example['text']}")


_SYSTEM = "You are a careful domain expert. Reply with the answer only, no explanation."

_SPECS: dict[str, dict[str, Any]] = {
    "phrasebank_allagree": dict(
        dataset="financial_phrasebank", config="allagree",
        instruction=("What is the sentiment of this sentence from financial news, for the company's "
                     "investors? Answer with exactly one word: {options}."),
        input_label="Sentence"),
    "phrasebank_50agree": dict(
        dataset="financial_phrasebank", config="50agree",
        instruction=("What is the sentiment of this sentence from financial news, for the company's "
                     "investors? Answer with exactly one word: {options}."),
        input_label="Sentence"),
    "banking77": dict(
        dataset="banking77", config=None,
        instruction=("Which intent does this bank customer's message express? Answer with exactly "
                     "one intent from this list, written as in the list: {options}."),
        input_label="Message"),
    "claudette_tos": dict(
        dataset="claudette_tos", config="binary",
        instruction=("Is this clause from an online terms-of-service agreement fair to the consumer, "
                     "or potentially unfair (for example unilateral changes, limited liability, "
                     "arbitration, or removing content or accounts at will)? Answer with exactly "
                     "one word: {options}."),
        input_label="Clause"),
    "nicta_piboso": dict(
        dataset="nicta_piboso", config=None,
        instruction=("What role does this sentence play in a medical research abstract? background "
                     "(context, prior work), population (the patients or subjects), intervention "
                     "(the treatment or exposure), outcome (results, measured effects), study design "
                     "(type of study, methods), or other. Answer with exactly one of: {options}."),
        input_label="Sentence"),
    "pubmedqa_pqal": dict(
        dataset="pubmedqa_pqal", config=None,
        instruction=("Read the abstract and answer the research question. Answer with exactly one "
                     "word: {options}."),
        input_label="Question", format_input=_pubmedqa_input),
}
TASK_NAMES = tuple(_SPECS)
PROMPT_NAME = "v1"
SHOT_LAYOUT = "instruction-in-first-turn"  # how k > 0 shots are laid out (in k-shot fingerprints)


def get_task(name: str, label_names: Sequence[str] | None = None) -> PromptTask:
  """The prompt task `name` (one of TASK_NAMES); label strings come from the builder's names.

  Args:
    name: task name.
    label_names: the dataset's class names in index order; None reads `research.data.info`.
  """
  if name not in _SPECS:
    raise ValueError(f"unknown prompt task {name!r}; choose one of {list(TASK_NAMES)}")
  spec = dict(_SPECS[name])
  if label_names is None:
    from research import data  # pylint: disable=g-import-not-at-top
    label_names = data.info(spec["dataset"], spec["config"]).label_names
  labels = tuple(readable_label(n) for n in label_names)
  normed = [normalize(label) for label in labels]
  if len(set(normed)) != len(normed):
    raise ValueError(f"task {name}: label strings {labels} are not distinct after normalising")
  return PromptTask(name=name, prompt_name=PROMPT_NAME, system=_SYSTEM, label_strings=labels,
                    **spec)


def _stable_seed(seed: int, key: str) -> int:
  return zlib.crc32(f"{seed}:{key}".encode())


def sample_shots(task: PromptTask, train: Sequence[Example], example: Example, *, k: int,
                 seed: int) -> list[Example]:
  """k demonstration examples from TRAIN for `example`, seeded per example, stratified by class.

  Classes are visited round-robin in a seeded order (k >= C gives every class once before any
  repeats), one random example each; the asked example (same id or text) is never chosen.
  """
  if k <= 0:
    return []
  rng = random.Random(_stable_seed(seed, str(example.get("id", example["text"]))))
  by_class: dict[int, list[Example]] = {}
  for ex in train:
    if ex.get("id") == example.get("id") or ex["text"] == example["text"]:
      continue
    by_class.setdefault(int(ex["label"]), []).append(ex)
  if sum(len(v) for v in by_class.values()) < k:
    raise ValueError(f"task {task.name}: asked for k={k} shots but train has "
                     f"{sum(len(v) for v in by_class.values())} usable examples; lower k")
  classes = sorted(by_class)
  rng.shuffle(classes)
  shots, taken = [], {c: set() for c in classes}
  while len(shots) < k:
    for c in classes:
      free = [i for i in range(len(by_class[c])) if i not in taken[c]]
      if not free or len(shots) == k:
        continue
      i = rng.choice(free)
      taken[c].add(i)
      shots.append(by_class[c][i])
  rng.shuffle(shots)
  return shots


def build_messages(task: PromptTask, example: Example, shots: Sequence[Example] = (), *,
                   context_words: int = 200) -> list[dict[str, str]]:
  """System, k-shot user/assistant turns, then the user turn asking about `example`.

  The instruction is written once, in the first user turn; later user turns carry only the input,
  so k shots add k inputs and answers, not k copies of (e.g.) banking77's 77-intent list. With k=0
  the single user turn is instruction + input.
  """
  messages = [{"role": "system", "content": task.system}]
  for i, ex in enumerate([*shots, example]):
    text = task.user_message(ex, context_words) if i == 0 else task.body(ex, context_words)
    messages.append({"role": "user", "content": text})
    if i < len(shots):
      messages.append({"role": "assistant", "content": task.label_strings[int(ex["label"])]})
  return messages


def normalize(text: str) -> str:
  """Lower case, '_'/'-' as spaces, punctuation dropped, spaces collapsed."""
  text = re.sub(r"[_\-/]", " ", text.lower())
  text = re.sub(r"[^\w\s]", " ", text)
  return re.sub(r"\s+", " ", text).strip()


_LEAD_IN = re.compile(
    r"^(?:(?:the|my|final|correct|predicted|most likely|i think|i would say|so)\s+)*"
    r"(?:(?:answer|label|intent|category|class|classification|sentiment|role|decision|response)"
    r"\s*(?:is|would be|:)?\s*)?(?:(?:it is|it s|this is|that is|the)\s+)*")


PARSER_VERSION = 3  # bump when parse_answer changes: stored answers are re-parsed, not re-run
_NEGATORS = {"not", "no", "never", "t"}  # "t": "isn't" normalises to "isn t"


def _labels_in(clause: str, labels: Sequence[str], by_length: Sequence[int]) -> set[int]:
  """Labels named as whole words, not negated ("not fair", "isn't entirely fair" do not count);
  a longer label claims its words before shorter ones."""
  words, claimed, found = clause.split(), set(), set()
  for i in by_length:
    target = labels[i].split()
    for start in range(len(words) - len(target) + 1):
      span = range(start, start + len(target))
      if words[start:start + len(target)] != target or claimed & set(span):
        continue
      claimed |= set(span)
      if not _NEGATORS & set(words[max(0, start - 2):start]):
        found.add(i)
  return found


def parse_answer(text: str, label_strings: Sequence[str]) -> int | None:
  """The class index a free-text answer names, or None when it names none (or several at once).

  Tried in order, on normalised text: the whole answer is a label; after dropping lead-in words
  ("Answer:", "The sentiment is") the first line starts with a label (longest label first); the
  first clause (split at . , ; ! ? and newlines) that names any label names exactly one.
  """
  labels = [normalize(s) for s in label_strings]
  lines = [line for line in text.strip().splitlines() if line.strip()]
  if not lines:
    return None
  full = normalize(text)
  if full in labels:
    return labels.index(full)
  stripped = _LEAD_IN.sub("", normalize(lines[0]), count=1).strip()
  by_length = sorted(range(len(labels)), key=lambda i: -len(labels[i]))
  for i in by_length:
    if stripped == labels[i] or stripped.startswith(labels[i] + " "):
      return i
  for clause in re.split(r"[.,;!?\n]+", text):
    found = _labels_in(normalize(clause), labels, by_length)
    if found:
      return found.pop() if len(found) == 1 else None
  return None
