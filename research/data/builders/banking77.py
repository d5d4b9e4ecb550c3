"""Banking77: 77-way intent classification of online-banking customer queries (BFSI)."""

import csv
import io
import json

import tensorflow_datasets as tfds

from research.data import splits as splits_lib
from research.data.builders import base

SPLIT_SEED = 0
VALIDATION_FRACTION = 0.1  # carved from the official train split, stratified by intent
_BASE = ("https://raw.githubusercontent.com/PolyAI-LDN/task-specific-datasets/"
         "57ec275d8078af65b7731c2a98be812d844a6d6b/banking_data/")
URLS = {f: _BASE + f for f in ("train.csv", "test.csv", "categories.json")}


def read_csv(path, names: list[str], prefix: str) -> list[base.Example]:
  """Reads a `text,category` CSV (quoted fields may hold newlines) into examples.

  Args:
    path: the CSV file.
    names: the label names.
    prefix: id prefix; ids are `<prefix>-<row number, 1-based, header excluded>`.

  Returns:
    Examples in file order.
  """
  rows = csv.reader(io.StringIO(base.read_text(path), newline=""))
  header = next(rows, None)
  if header != ["text", "category"]:
    raise ValueError(f"{path}: expected header ['text', 'category'], got {header}")
  examples = []
  for row_no, row in enumerate(rows, start=1):
    where = f"{path}: row {row_no} (line {rows.line_num})"
    if len(row) != 2 or not row[0].strip():
      raise ValueError(f"{where}: expected 2 fields 'text,category' with a text, got {row}")
    examples.append({"id": f"{prefix}-{row_no:05d}", "text": row[0].strip(),
                     "label": base.label_index(names, row[1], where)})
  return examples


class Banking77(base.DomainBuilder):
  """Banking77: official train/test; validation is a seeded, stratified 10% of official train."""

  HOMEPAGE = "https://github.com/PolyAI-LDN/task-specific-datasets"
  CARVED_VALIDATION = True
  LICENSE = "CC BY 4.0"
  DESCRIPTION = ("Online-banking customer queries labelled with one of 77 intents. Validation is "
                 "10% of the official train split per intent (seed 0, sha256 order).")
  CITATION = """@inproceedings{casanueva2020efficient,
  title={Efficient Intent Detection with Dual Sentence Encoders},
  author={Casanueva, I{\\~n}igo and Tem{\\v{c}}inas, Tadas and Gerz, Daniela and Henderson, Matthew and Vuli{\\'c}, Ivan},
  booktitle={Proceedings of the 2nd Workshop on Natural Language Processing for Conversational AI},
  year={2020}, note={arXiv:2003.04807}
}"""

  def _label_feature(self) -> tfds.features.FeatureConnector:
    # Names come from categories.json at build time; read back from the data dir afterwards.
    return tfds.features.ClassLabel(num_classes=77)

  def _urls(self) -> dict[str, str]:
    return dict(URLS)

  def _read_splits(self, files: base.FileGetter) -> dict[str, list[base.Example]]:
    cats_path = files("categories.json")
    names = json.loads(base.read_text(cats_path))
    if not (isinstance(names, list) and len(names) == 77 and len(set(names)) == 77):
      raise ValueError(f"{cats_path}: expected a JSON list of 77 distinct intent names")
    self.info.features["label"].names = names
    train = read_csv(files("train.csv"), names, "train")
    test = read_csv(files("test.csv"), names, "test")
    fit, val = splits_lib.stratified_partition(
        [ex["id"] for ex in train], [ex["label"] for ex in train],
        [1 - VALIDATION_FRACTION, VALIDATION_FRACTION], SPLIT_SEED)
    return {"train": [train[i] for i in fit], "validation": [train[i] for i in val], "test": test}
