"""`local_text`: a builder for a user's own CSV/JSONL text-classification files, any domain.

Put `train.{csv,tsv,jsonl}` and optionally `validation.*` (or `dev.*`) and `test.*` in a folder and
call `research.data.load("local_text", "<spec>", "train", manual_dir=<folder>)`. A split that has
no file is carved from train: validation.csv (or dev.csv) is used when present, else 10% of train
(stratified by label, seed 0) becomes validation; the same for test. Before carving, train rows
whose normalised text repeats are dropped (the first is kept), so carved splits never share a
sentence with train (`dedupe=off` keeps them; `dedupe=strict` also drops train rows whose text is in
your own validation/test files). The spec names the columns:
`"text=sentence,text_pair=context,label=intent,id=uid,labels=neg|pos,dedupe=strict"` (all optional;
defaults text=text, label=label, no text_pair, ids `<split>-<row>`). Labels may be strings or
integers; class i is the i-th of `labels=` or, without it, of the distinct train labels sorted
(numerically when all are integers, else as strings: "neg" < "neu" < "pos"). JSONL: one object per
line with the same keys as the CSV columns. The built dataset's config name carries a hash of the
files and the spec, so edited files rebuild.
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

import sys

import tensorflow_datasets as tfds

from research.data import checks
from research.data import splits as splits_lib
from research.data.builders import base

SPLIT_SEED = 0
CARVE_FRACTION = 0.1
SPLIT_FILES = {"train": ("train",), "validation": ("validation", "dev"), "test": ("test",)}
FORMATS = (".csv", ".tsv", ".jsonl")
DEDUPE_MODES = ("auto", "strict", "off")


@dataclasses.dataclass(frozen=True)
class LocalTextSpec:
  """Column names and label order for a local_text folder."""
  text: str = "text"
  text_pair: str = ""
  label: str = "label"
  id: str = ""
  labels: tuple[str, ...] = ()  # label names in class order; () -> sorted distinct train labels
  dedupe: str = "auto"          # auto | strict | off (module docstring)

  @classmethod
  def parse(cls, spec: "str | LocalTextSpec | None") -> "LocalTextSpec":
    """Parses `"key=value,..."` (keys: text, text_pair, label, id, labels as `a|b|c`, dedupe).

    A bare word (no "=") is another dataset's config name left in `data.config` when a config
    switched `data.name` to local_text (e.g. "binary"): it names no column, so it is ignored with
    a note instead of failing.
    """
    if isinstance(spec, LocalTextSpec):
      return spec
    spec = (spec or "").strip()
    if spec and "=" not in spec and "," not in spec:
      print(f"local_text: data.config {spec!r} is not a column spec (it looks like another "
            "dataset's config name); using the default columns text,label", file=sys.stderr)
      spec = ""
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
      key, sep, value = item.partition("=")
      key = key.strip()
      if not sep or key not in {f.name for f in dataclasses.fields(cls)}:
        raise ValueError(f"local_text spec item {item!r}: expected key=value with key in "
                         "text, text_pair, label, id, labels (e.g. 'text=sentence,label=intent')")
      kwargs[key] = tuple(value.split("|")) if key == "labels" else value.strip()
    if kwargs.get("dedupe", "auto") not in DEDUPE_MODES:
      raise ValueError(f"local_text spec dedupe={kwargs['dedupe']!r}: use one of "
                       f"{', '.join(DEDUPE_MODES)}")
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


def read_user_splits(files: dict[str, pathlib.Path], spec: LocalTextSpec
                     ) -> tuple[dict[str, list[base.Example]], list[str]]:
  """The examples of each split file as given (no carving, no dedupe) and the label names."""
  raw: dict[str, list[tuple[str, dict[str, Any]]]] = {}
  needed = [c for c in (spec.text, spec.text_pair, spec.label, spec.id) if c]
  for split, path in files.items():
    raw[split] = rows = list(read_rows(path))
    if not rows:
      raise ValueError(f"local_text: {path} has no rows; split {split!r} would be empty.")
    missing = [c for c in needed if c not in rows[0][1]]
    if missing:
      raise ValueError(f"local_text: {path} lacks column(s) {missing} (has "
                       f"{sorted(rows[0][1])}); name them in the spec, e.g. 'text=...,label=...'")
  names = list(spec.labels)
  if not names:
    values = {_label_str(row.get(spec.label), w) for w, row in raw["train"]}
    numeric = all(v.lstrip("-").isdigit() for v in values)
    names = sorted(values, key=int) if numeric else sorted(values)
  given = {}
  for split, rows in raw.items():
    examples = []
    for row_no, (where, row) in enumerate(rows, start=1):
      text = row.get(spec.text)
      if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: empty or non-text {spec.text!r} value {text!r}; fill it in "
                         "or delete the row")
      ex = {"id": str(row[spec.id]) if spec.id else f"{split}-{row_no:06d}",
            "text": text.strip(),
            "label": base.label_index(names, _label_str(row.get(spec.label), where), where)}
      if spec.text_pair:
        ex["text_pair"] = str(row.get(spec.text_pair) or "").strip()
      examples.append(ex)
    given[split] = examples
  return given, names


def user_splits(root: str | os.PathLike[str], spec: "str | LocalTextSpec | None" = None
                ) -> tuple[dict[str, list[base.Example]], list[str]]:
  """The user's split files in `root` as given (what the data checks look at first)."""
  return read_user_splits(find_split_files(pathlib.Path(root)), LocalTextSpec.parse(spec))


def _key(ex: base.Example) -> str:
  return checks.normalise(ex["text"] + "\t" + ex.get("text_pair", ""))


def make_splits(given: dict[str, list[base.Example]], spec: LocalTextSpec
                ) -> tuple[dict[str, list[base.Example]], dict[str, int]]:
  """Dedupes train (see the module docstring) and carves the missing splits from it.

  Returns:
    (split -> examples, notes {"dropped_duplicates", "dropped_overlap"}: train rows removed).
  """
  carve = [s for s in ("validation", "test") if s not in given]
  train = list(given["train"])
  notes = {"dropped_duplicates": 0, "dropped_overlap": 0}
  if spec.dedupe == "strict":  # train rows your own validation/test files contain
    held = {_key(ex) for s in ("validation", "test") for ex in given.get(s, ())}
    kept = [ex for ex in train if _key(ex) not in held]
    notes["dropped_overlap"], train = len(train) - len(kept), kept
  if spec.dedupe == "strict" or (spec.dedupe == "auto" and carve):
    seen: set[str] = set()
    kept = []
    for ex in train:
      if (k := _key(ex)) not in seen:
        seen.add(k)
        kept.append(ex)
    notes["dropped_duplicates"], train = len(train) - len(kept), kept
  splits = {**given, "train": train}
  if carve:
    parts = splits_lib.stratified_partition(
        [ex["id"] for ex in train], [ex["label"] for ex in train],
        [1 - CARVE_FRACTION * len(carve)] + [CARVE_FRACTION] * len(carve), SPLIT_SEED)
    for split, idx in zip(["train", *carve], parts):
      splits[split] = [train[i] for i in idx]
  return splits, notes


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
    given, names = read_user_splits(files, self.spec)
    splits, self.notes = make_splits(given, self.spec)
    self.CARVED_VALIDATION = "validation" not in given  # pylint: disable=invalid-name
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
    self.info.metadata.update(self.notes)
    return self._splits


# Fields of a run config that name its task (run name, table tag, run directories).
NAMED_FIELDS = ("name", "tags.task", "workdir", "distill.teacher")


def name_after_folder(config: Any, given: "set[str] | frozenset[str]" = frozenset()) -> list[str]:
  """Names a run after the user's folder when a config made for another task switched to local_text.

  A task config (configs/common.py task_config) names everything after its task: `name`,
  `tags.task`, `workdir` (runs/<task>/...) and a student's `distill.teacher`. After
  `--config.data.name=local_text` those still say e.g. phrasebank_allagree, so the run would be
  filed (and a teacher looked for) under that task. When "data.name" is in `given` (the fields
  set on the command line) and tags.task is not, the old task name in each field of NAMED_FIELDS
  that the user did not set is replaced by the folder's name (the last part of data.manual_dir;
  "local_text" without one), with a note on stderr.

  Returns:
    one "field 'old' -> 'new'" string per renamed field (empty when nothing changed).
  """
  old = str(config.tags.get("task", "") or "")
  if config.data.name != "local_text" or "data.name" not in given or "tags.task" in given \
      or not old:
    return []
  folder = str(config.data.get("manual_dir", "") or "")
  new = (pathlib.Path(folder).resolve().name if folder else "") or "local_text"
  changed = []
  for field in NAMED_FIELDS:
    parent, _, leaf = field.rpartition(".")
    node = config.get(parent, {}) if parent else config
    value = node.get(leaf)
    if field in given or not isinstance(value, str) or old not in value or old == new:
      continue
    node[leaf] = value.replace(old, new)
    changed.append(f"{field} {value!r} -> {node[leaf]!r}")
  if changed:
    print(f"local_text: this config names its run after task {old!r}; named after the data "
          f"instead: {'; '.join(changed)} (--config.name / --config.tags.task / --config.workdir "
          "/ --config.distill.teacher choose them)", file=sys.stderr)
  return changed
