"""Shared machinery for the domain dataset builders.

Each builder reads raw files either from a manual_dir (offline; the default) or from the public URLs
in its SOURCE.md (`download=True`), parses every split eagerly, checks it (no malformed line, no
unknown label, no empty split, no duplicate id) and writes array_record files that
`tfds.data_source` reads back without the TensorFlow runtime.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import abc
import hashlib
import os
import pathlib

import tensorflow_datasets as tfds

Example = dict[str, Any]
# A function that maps a file name relative to the dataset folder to a readable local path.
FileGetter = Callable[[str], pathlib.Path]

ENV_DATA_DIR = "RESEARCH_DATA_DIR"
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]


def default_manual_dir(name: str) -> tuple[pathlib.Path, str]:
  """Where `name`'s raw files live when no manual_dir is given, and why.

  Returns:
    (path, reason): `$RESEARCH_DATA_DIR/<name>` when the variable is set, else
    `<repo>/../shared/data/<name>`.
  """
  env = os.environ.get(ENV_DATA_DIR)
  if env:
    return pathlib.Path(env) / name, f"${ENV_DATA_DIR}={env}"
  return _REPO_ROOT.parent / "shared" / "data" / name, f"default <repo>/../shared/data/{name}"


def resolve_manual_dir(name: str, manual_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
  """Resolves the folder with `name`'s raw files: explicit arg, then the env var, then the default.

  Raises:
    FileNotFoundError: the folder does not exist (the message names it and the fix).
  """
  if manual_dir:
    path, reason = pathlib.Path(manual_dir), "manual_dir argument"
  else:
    path, reason = default_manual_dir(name)
  if not path.is_dir():
    raise FileNotFoundError(
        f"{name}: raw data folder {path} ({reason}) does not exist; pass manual_dir=<folder with "
        f"the {name} files> or set ${ENV_DATA_DIR} to the folder that holds {name}/.")
  return path


def manual_file_getter(name: str, root: pathlib.Path) -> FileGetter:
  """A FileGetter over a manual_dir that fails clearly on a missing file."""

  def get(rel: str) -> pathlib.Path:
    path = root / rel
    if not path.is_file():
      raise FileNotFoundError(
          f"{name}: missing raw file {path}; copy it from the public source listed in "
          f"{root / 'SOURCE.md'} or point manual_dir/${ENV_DATA_DIR} at a complete copy.")
    return path

  return get


def label_index(names: Sequence[str], value: str, where: str) -> int:
  """Index of `value` in `names`, or a ValueError that says where the bad label is."""
  try:
    return names.index(value)
  except ValueError:
    raise ValueError(f"{where}: unknown label {value!r}; expected one of {list(names)}") from None


def read_text(path: pathlib.Path, encoding: str = "utf-8") -> str:
  """Reads a whole text file; a decode error names the file and its byte offset."""
  try:
    return path.read_text(encoding=encoding)
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not valid {encoding} at byte {e.start}: {e.reason}") from None


class DomainBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base builder: subclasses give features, files, URLs and a `_read_splits` parser."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the raw files listed in the dataset's SOURCE.md in manual_dir (default "
      f"${ENV_DATA_DIR}/<name>), or build with download=True.")
  HOMEPAGE: str = ""
  CITATION: str = ""
  LICENSE: str = ""
  DESCRIPTION: str = ""
  # True when "validation" is carved from the source's train split (then train+validation is it).
  CARVED_VALIDATION: bool = False

  def __init__(self, *, manual_dir: str | os.PathLike[str] | None = None, download: bool = False,
               **kwargs: Any):
    """Creates the builder (reads nothing yet).

    Args:
      manual_dir: folder with the raw files; None -> `resolve_manual_dir` defaults.
      download: fetch the public URLs instead of reading manual_dir.
      **kwargs: `tfds.core.GeneratorBasedBuilder` args (data_dir, config, file_format, ...).
    """
    self.manual_dir_arg = manual_dir
    self._download = download
    super().__init__(**kwargs)

  # --- what subclasses provide ---

  @abc.abstractmethod
  def _label_feature(self) -> tfds.features.FeatureConnector:
    """`ClassLabel` (single label) or `Sequence(ClassLabel)` (multilabel)."""

  def _extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
    return {}

  @abc.abstractmethod
  def _urls(self) -> dict[str, str]:
    """File name relative to the dataset folder -> public URL, for this config."""

  @abc.abstractmethod
  def _read_splits(self, files: FileGetter) -> dict[str, list[Example]]:
    """Parses the raw files into split -> examples (each with "id", "text", "label", ...)."""

  def raw_checksum(self) -> str | None:
    """SHA-256 (16 hex) of the raw files this config reads from manual_dir; None when the build
    downloads. Stored in the build's metadata ("raw_checksum"): `research.data.loading` rebuilds
    when the files changed."""
    if self._download:
      return None
    root = resolve_manual_dir(self.name, self.manual_dir_arg)
    digest = hashlib.sha256()
    for rel in sorted(self._urls()):
      path = root / rel
      digest.update(rel.encode() + b"\0")
      digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    return digest.hexdigest()[:16]

  # --- TFDS hooks ---

  def _info(self) -> tfds.core.DatasetInfo:
    features = {"id": tfds.features.Text(), "text": tfds.features.Text(),
                "label": self._label_feature(), **self._extra_features()}
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION, features=tfds.features.FeaturesDict(features),
        homepage=self.HOMEPAGE, citation=self.CITATION, license=self.LICENSE,
        disable_shuffling=True,  # keep source order: `index` in batches is the position in it
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    if self._download:
      paths = dl_manager.download(self._urls())

      def files(rel: str) -> pathlib.Path:
        return pathlib.Path(paths[rel])
    else:
      explicit = self.manual_dir_arg
      if not explicit:
        try:  # DownloadConfig(manual_dir=...) when a caller used the plain TFDS API
          explicit = dl_manager.manual_dir
        except (AssertionError, ValueError):
          explicit = None
      files = manual_file_getter(self.name, resolve_manual_dir(self.name, explicit))
    splits = self._read_splits(files)
    check_splits(self.name, splits)
    checksum = self.raw_checksum()
    if checksum is not None:
      self.info.metadata["raw_checksum"] = checksum
    return {split: self._generate_examples(examples) for split, examples in splits.items()}

  def _generate_examples(self, examples: list[Example]) -> Iterator[tuple[str, Example]]:
    for ex in examples:
      yield ex["id"], ex


def check_splits(name: str, splits: Mapping[str, Sequence[Example]]) -> None:
  """Raises on an empty split or on an id that appears twice (within or across splits)."""
  seen: dict[str, str] = {}
  for split, examples in splits.items():
    if not examples:
      raise ValueError(f"{name}: split {split!r} has no examples; check the raw files for it.")
    for ex in examples:
      if ex["id"] in seen:
        raise ValueError(f"{name}: example id {ex['id']!r} appears in {seen[ex['id']]!r} and "
                         f"{split!r}; ids must be unique.")
      seen[ex["id"]] = split
