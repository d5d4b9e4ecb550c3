"""`local_text`: a builder for a user's own CSV/JSONL text-classification files, any domain.

Put `train.{csv,jsonl}` and optionally `validation.*` (or `dev.*`) and `test.*` in a folder and call
`research.data.load("local_text", "<spec>", "train", manual_dir=<folder>)`. A missing validation or
test split is carved from train (seeded, stratified, 10% each). The spec names the columns:
`"text=sentence,text_pair=context,label=intent,id=uid,labels=neg|pos"` (all optional; defaults
text=text, label=label, no text_pair, ids `<split>-<row>`, label names = sorted train labels).
The built dataset's config name carries a hash of the files and the spec, so edited files rebuild.
"""

from collections.abc import Iterator
from typing import Any

import csv
import dataclasses
import hashlib
import io
import json
import os
import pathlib

import tensorflow_datasets as tfds

from research.data import splits as splits_lib
from research.data.builders import base

SPLIT_SEED = 0
CARVE_FRACTION = 0.1
SPLIT_FILES = {"train": ("train",), "validation": ("validation", "dev"), "test": ("test",)}
FORMATS = (".csv", ".tsv", ".jsonl")


@dataclasses.dataclass(frozen=True)
class LocalTextSpec:
  """Column names and label order for a local_text folder."""
  text: str = "text"
  text_pair: str = ""
  label: str = "label"
  id: str = ""
  labels: tuple[str, ...] = ()  # label names in class order; () -> sorted distinct train labels

  @classmethod
  def parse(cls, spec: "str | LocalTextSpec | None") -> "LocalTextSpec":
    """Parses `"key=value,..."` (keys: text, text_pair, label, id, labels as `a|b|c`)."""
    if isinstance(spec, LocalTextSpec):
      return spec
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
      key, sep, value = item.partition("=")
      key = key.strip()
      if not sep or key not in {f.name for f in dataclasses.fields(cls)}:
        raise ValueError(f"local_text spec item {item!r}: expected key=value with key in "
                         "text, text_pair, label, id, labels (e.g. 'text=sentence,label=intent')")
      kwargs[key] = tuple(value.split("|")) if key == "labels" else value.strip()
    return cls(**kwargs)


def find_split_files(root: pathlib.Path) -> dict[str, pathlib.Path]:
  """split -> file for the splits present in `root` (train is required)."""
  found = {}
  for split, stems in SPLIT_FILES.items():
    hits = [root / f"{stem}{ext}" for stem in stems for ext in FORMATS
            if (root / f"{stem}{ext}").is_file()]
    if len(hits) > 1:
      raise ValueError(f"local_text: several files for split {split!r}: {hits}; keep one.")
    if hits:
      found[split] = hits[0]
  if "train" not in found:
    raise FileNotFoundError(f"local_text: no train file in {root}; add train.csv, train.tsv or "
                            "train.jsonl (columns: text, label, optional text_pair/id).")
  return found


def read_rows(path: pathlib.Path) -> Iterator[tuple[str, dict[str, Any]]]:
  """Yields (location, row dict) from a CSV/TSV (header row) or JSONL file (UTF-8; a leading
  byte-order mark is accepted)."""
  text = base.read_text(path)
  if text.startswith("\ufeff"):  # a UTF-8 BOM (Excel's "CSV UTF-8"): not part of the header
    text = text[1:]
  if path.suffix == ".jsonl":
    for line_no, line in enumerate(text.split("\n"), start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path}:{line_no}: expected a JSON object per line")
      yield f"{path}:{line_no}", row
  else:
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True,
                            delimiter="\t" if path.suffix == ".tsv" else ",")
    row_no, start = 0, 2  # the line where the next row starts (line 1 is the header)
    while True:
      try:
        row = next(reader)
      except StopIteration:
        return
      except csv.Error as e:
        raise ValueError(_csv_error(path, text, start, e)) from None
      row_no += 1
      if None in row or None in row.values():
        raise ValueError(f"{path}: row {row_no} (line {start}) has "
                         f"{'more' if None in row else 'fewer'} fields than the header")
      yield f"{path}: row {row_no} (line {start})", row
      start = reader.line_num + 1


def _csv_error(path: pathlib.Path, text: str, start: int, e: csv.Error) -> str:
  """A CSV parse error that points at the row's opening quote when a quoted field never closes."""
  lines = text.split("\n")
  for line_no in range(start, len(lines) + 1):
    line = lines[line_no - 1]
    col = line.find('"')
    if col >= 0 and (line.count('"') % 2 == 1):
      return (f"{path}: line {line_no}, column {col + 1}: a quoted field opens here and never "
              f"closes ({e}); close the quote, or double a quote inside the field (\"\")")
  return f"{path}: line {start}: {e}"


def _label_str(value: Any, where: str) -> str:
  if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
    raise ValueError(f"{where}: label {value!r} must be a non-empty string or an integer")
  return str(value).strip()


class LocalText(base.DomainBuilder):
  """Builder over a folder of CSV/TSV/JSONL files (see the module docstring)."""

  HOMEPAGE = ""  # user data: no public homepage
  LICENSE = "The user's own data."
  DESCRIPTION = "User-provided text classification files."
  CITATION = ""

  def __init__(self, *, spec: "str | LocalTextSpec | None" = None,
               manual_dir: str | os.PathLike[str] | None = None, **kwargs: Any):
    """Reads and checks the files now (the label names are part of the features).

    Args:
      spec: column spec, see `LocalTextSpec.parse`.
      manual_dir: the folder with the files; None -> $RESEARCH_DATA_DIR/local_text.
      **kwargs: `tfds.core.GeneratorBasedBuilder` args (data_dir, file_format, ...).
    """
    self.spec = LocalTextSpec.parse(spec)
    root = base.resolve_manual_dir("local_text", manual_dir)
    files = find_split_files(root)
    digest = hashlib.sha256(repr(self.spec).encode())
    for split, path in sorted(files.items()):
      digest.update(split.encode() + path.name.encode() + path.read_bytes())
    self._splits, self._label_names = self._parse(files)
    config = tfds.core.BuilderConfig(name=f"files_{digest.hexdigest()[:16]}",
                                     description=f"{root} with {self.spec}")
    super().__init__(manual_dir=root, config=config, **kwargs)

  def _parse(self, files: dict[str, pathlib.Path]) -> tuple[dict[str, list[base.Example]],
                                                            list[str]]:
    raw: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for split, path in files.items():
      raw[split] = rows = list(read_rows(path))
      if not rows:
        raise ValueError(f"local_text: {path} has no rows; split {split!r} would be empty.")
      needed = [c for c in (self.spec.text, self.spec.text_pair, self.spec.label, self.spec.id)
                if c]
      missing = [c for c in needed if c not in rows[0][1]]
      if missing:
        raise ValueError(f"local_text: {path} lacks column(s) {missing} (has "
                         f"{sorted(rows[0][1])}); name them in the spec, e.g. 'text=...,label=...'")
    names = list(self.spec.labels)
    if not names:
      values = {_label_str(row.get(self.spec.label), w) for w, row in raw["train"]}
      numeric = all(v.lstrip("-").isdigit() for v in values)
      names = sorted(values, key=int) if numeric else sorted(values)
    splits = {}
    for split, rows in raw.items():
      examples = []
      for row_no, (where, row) in enumerate(rows, start=1):
        text = row.get(self.spec.text)
        if not isinstance(text, str) or not text.strip():
          raise ValueError(f"{where}: empty or non-text {self.spec.text!r} value {text!r}")
        ex = {"id": str(row[self.spec.id]) if self.spec.id else f"{split}-{row_no:06d}",
              "text": text.strip(),
              "label": base.label_index(names, _label_str(row.get(self.spec.label), where), where)}
        if self.spec.text_pair:
          ex["text_pair"] = str(row.get(self.spec.text_pair) or "").strip()
        examples.append(ex)
      splits[split] = examples
    carve = [s for s in ("validation", "test") if s not in splits]
    self.CARVED_VALIDATION = "validation" in carve  # pylint: disable=invalid-name
    if carve:
      train = splits["train"]
      parts = splits_lib.stratified_partition(
          [ex["id"] for ex in train], [ex["label"] for ex in train],
          [1 - CARVE_FRACTION * len(carve)] + [CARVE_FRACTION] * len(carve), SPLIT_SEED)
      for split, idx in zip(["train", *carve], parts):
        splits[split] = [train[i] for i in idx]
    return splits, names

  def _label_feature(self) -> tfds.features.FeatureConnector:
    return tfds.features.ClassLabel(names=self._label_names)

  def _extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
    return {"text_pair": tfds.features.Text()} if self.spec.text_pair else {}

  def raw_checksum(self) -> None:
    return None  # the config name already holds the files' hash

  def _urls(self) -> dict[str, str]:
    raise ValueError("local_text has no public source; give manual_dir=<folder with your files>.")

  def _read_splits(self, files: base.FileGetter) -> dict[str, list[base.Example]]:
    del files  # parsed in __init__ (the label names are needed before building)
    return self._splits
