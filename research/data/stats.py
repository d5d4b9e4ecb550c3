"""Per-split dataset statistics: sizes, label counts and token lengths under a tokenizer."""

from collections.abc import Sequence
from typing import Any

import dataclasses
import os

import numpy as np

from research.data import loading
from research.data import pipeline

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class SplitStats:
  """One row of the stats table."""
  name: str
  config: str | None
  split: str                      # a split, "train+validation" (source train) or "all"
  examples: int
  num_classes: int
  label_counts: dict[str, int]    # label name -> examples carrying it (multilabel: "(none)" too)
  tokens_p50: float               # untruncated tokens per example (text + text_pair, specials)
  tokens_p95: float
  tokens_max: int
  over_max_length: int            # examples longer than max_length (truncated in training)


def _row(name: str, config: str | None, split: str, records: Sequence[dict[str, Any]],
         lengths: np.ndarray, label_names: Sequence[str], max_length: int) -> SplitStats:
  counts = dict.fromkeys(label_names, 0)
  none = 0
  for r in records:
    labels = r["label"] if isinstance(r["label"], list) else [r["label"]]
    none += not labels
    for c in labels:
      counts[label_names[c]] += 1
  if any(isinstance(r["label"], list) for r in records):
    counts["(none)"] = none
  return SplitStats(name=name, config=config, split=split, examples=len(records),
                    num_classes=len(label_names), label_counts=counts,
                    tokens_p50=float(np.percentile(lengths, 50)),
                    tokens_p95=float(np.percentile(lengths, 95)), tokens_max=int(lengths.max()),
                    over_max_length=int((lengths > max_length).sum()))


def dataset_stats(name: str, config: str | None, *, tokenizer: Any, max_length: int = 128,
                  manual_dir: str | os.PathLike[str] | None = None,
                  data_dir: str | os.PathLike[str] | None = None) -> list[SplitStats]:
  """Stats rows for each split of a dataset config, then the source train pool and the total.

  Args:
    name, config: the dataset (see `research.data.load`).
    tokenizer: a `transformers` tokenizer; lengths are measured without truncation.
    max_length: counts examples longer than this.
    manual_dir, data_dir: as for `research.data.load`.

  Returns:
    Rows for train, validation, test, then "train+validation" when validation was carved from the
    source's train split, then "all".
  """
  meta = loading.info(name, config, manual_dir=manual_dir, data_dir=data_dir)
  per_split = {}
  for split in SPLITS:
    records = loading.load(name, config, split, manual_dir=manual_dir, data_dir=data_dir)
    pairs = [r["text_pair"] for r in records] if meta.has_text_pair else None
    enc = tokenizer([r["text"] for r in records], pairs, truncation=False)
    per_split[split] = (records, np.array([len(ids) for ids in enc["input_ids"]]))
  groups = [(s, (s,)) for s in SPLITS]
  if meta.carved_validation:
    groups.append(("train+validation", ("train", "validation")))
  groups.append(("all", SPLITS))
  rows = []
  for label, members in groups:
    records = [r for s in members for r in per_split[s][0]]
    lengths = np.concatenate([per_split[s][1] for s in members])
    rows.append(_row(name, meta.config, label, records, lengths, meta.label_names, max_length))
  return rows


def format_table(rows: Sequence[SplitStats], max_length: int, max_listed: int = 8) -> str:
  """A Markdown table; label counts are listed for up to max_listed classes, else min-max."""
  head = ("| dataset | config | split | examples | classes | label counts | tok p50 | tok p95 "
          f"| tok max | >{max_length} |")
  lines = [head, "|" + "---|" * 10]
  for r in rows:
    if len(r.label_counts) <= max_listed + 1:
      labels = ", ".join(f"{k} {v:,}" for k, v in r.label_counts.items())
    else:
      values = [v for k, v in r.label_counts.items() if k != "(none)"]
      labels = f"{min(values):,}-{max(values):,} per class"
    lines.append(f"| {r.name} | {r.config or '-'} | {r.split} | {r.examples:,} | {r.num_classes} "
                 f"| {labels} | {r.tokens_p50:.0f} | {r.tokens_p95:.0f} | {r.tokens_max} "
                 f"| {r.over_max_length:,} |")
  return "\n".join(lines)


def all_configs() -> list[tuple[str, str | None]]:
  """(name, config) for every built-in dataset config."""
  from research.data.builders import BUILDERS  # pylint: disable=g-import-not-at-top
  return [(name, config) for name, cls in BUILDERS.items()
          for config in ([c.name for c in cls.BUILDER_CONFIGS] or [None])]


def stats_table(datasets: Sequence[tuple[str, str | None]], *, tokenizer_path: str | None = None,
                max_length: int = 128, manual_dir: str | None = None,
                data_dir: str | None = None) -> str:
  """The Markdown stats table for (name, config) pairs under the tokenizer at tokenizer_path."""
  tokenizer = pipeline.load_tokenizer(tokenizer_path)
  rows = [row for name, config in datasets
          for row in dataset_stats(name, config, tokenizer=tokenizer, max_length=max_length,
                                   manual_dir=manual_dir, data_dir=data_dir)]
  return format_table(rows, max_length)
