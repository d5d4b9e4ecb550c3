"""Builders on small synthetic manual_dirs: parsing rules and clear errors, never silent drops."""

import json
import pathlib

import pytest

import research.data as rd
from research.data.builders import base
from research.data.builders import claudette_tos


def _write(root: pathlib.Path, files: dict[str, str | bytes]) -> pathlib.Path:
  for rel, content in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
  return root


def _nicta(root, dev="###9\nother\tA dev sentence .\n\n"):
  return _write(root, {
      "train_clean.txt": "###1\nbackground\tFirst sentence .\noutcome\tSecond one .\n\n"
                         "###2\npopulation\tThird .\n\n",
      "dev_clean.txt": dev,
      "test_clean.txt": "###5\nstudy design\tA test sentence .\n\n",
  })


def _phrasebank_lines(n_per_class: int) -> list[str]:
  return [f"Sentence {label} number {i} .@{label}"
          for label in ("positive", "negative", "neutral") for i in range(n_per_class)]


def test_nicta_parses_ids_and_labels(tmp_path):
  root = _nicta(tmp_path / "raw")
  train = rd.load("nicta_piboso", None, "train", manual_dir=root, data_dir=tmp_path / "d")
  assert train == [{"id": "1-01", "text": "First sentence .", "label": 2},
                   {"id": "1-02", "text": "Second one .", "label": 3},
                   {"id": "2-01", "text": "Third .", "label": 0}]


def test_missing_manual_dir_names_path_and_fix(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match=rf"{missing}.*manual_dir=.*RESEARCH_DATA_DIR"):
    rd.load("nicta_piboso", None, "train", manual_dir=missing, data_dir=tmp_path / "d")


def test_missing_file_names_it(tmp_path):
  root = _nicta(tmp_path / "raw")
  (root / "dev_clean.txt").unlink()
  with pytest.raises(FileNotFoundError, match=r"missing raw file .*dev_clean\.txt"):
    rd.load("nicta_piboso", None, "train", manual_dir=root, data_dir=tmp_path / "d")
  assert not (tmp_path / "d" / "nicta_piboso" / "1.0.0").exists()  # nothing half-built


def test_env_var_resolution(tmp_path, monkeypatch):
  _nicta(tmp_path / "env" / "nicta_piboso")
  monkeypatch.setenv(base.ENV_DATA_DIR, str(tmp_path / "env"))
  assert len(rd.load("nicta_piboso", None, "test", data_dir=tmp_path / "d")) == 1
  monkeypatch.setenv(base.ENV_DATA_DIR, str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match=r"RESEARCH_DATA_DIR="):
    base.resolve_manual_dir("nicta_piboso")


def test_unknown_label_names_line(tmp_path):
  root = _nicta(tmp_path / "raw", dev="###9\nresults\tA dev sentence .\n\n")
  with pytest.raises(ValueError, match=r"dev_clean\.txt:2: unknown label 'results'"):
    rd.load("nicta_piboso", None, "train", manual_dir=root, data_dir=tmp_path / "d")


def test_unreadable_line_names_line(tmp_path):
  root = _nicta(tmp_path / "raw", dev="###9\nother A sentence without a tab\n\n")
  with pytest.raises(ValueError, match=r"dev_clean\.txt:2: expected"):
    rd.load("nicta_piboso", None, "train", manual_dir=root, data_dir=tmp_path / "d")


def test_empty_split_is_an_error(tmp_path):
  root = _nicta(tmp_path / "raw", dev="\n")
  with pytest.raises(ValueError, match=r"split 'validation' has no examples"):
    rd.load("nicta_piboso", None, "train", manual_dir=root, data_dir=tmp_path / "d")


def test_phrasebank_last_at_latin1_and_bad_line(tmp_path):
  lines = _phrasebank_lines(10)
  lines[0] = "Contact ir@company.fi for Sepp\xe4l\xe4 's results .@positive"
  root = _write(tmp_path / "raw", {"Sentences_AllAgree.txt": "\n".join(lines).encode("latin-1")})
  records = rd.load("financial_phrasebank", "allagree", "train+validation+test", manual_dir=root,
                    data_dir=tmp_path / "d")
  assert len(records) == 30  # no trailing newline: the last line still counts
  first = next(r for r in records if r["id"] == "allagree-00001")
  assert first["text"] == "Contact ir@company.fi for Sepp\xe4l\xe4 's results ."
  assert first["label"] == 2
  lines[5] = "no label separator here"
  _write(root, {"Sentences_AllAgree.txt": "\n".join(lines).encode("latin-1")})
  with pytest.raises(ValueError, match=r"Sentences_AllAgree\.txt:6: expected 'sentence@label'"):
    rd.load("financial_phrasebank", "allagree", "train", manual_dir=root, data_dir=tmp_path / "e")


def test_phrasebank_duplicates_are_counted_and_kept_together(tmp_path):
  lines = _phrasebank_lines(20) + ["Sentence positive number 3 .@positive"] * 3
  root = _write(tmp_path / "raw", {"Sentences_50Agree.txt": "\n".join(lines) + "\n"})
  meta = rd.info("financial_phrasebank", "50agree", manual_dir=root, data_dir=tmp_path / "d")
  assert sum(meta.splits.values()) == 63 and meta.metadata["duplicate_sentences"] == 3
  homes = {s for s in meta.splits
           for r in rd.load("financial_phrasebank", "50agree", s, manual_dir=root,
                            data_dir=tmp_path / "d")
           if r["text"] == "Sentence positive number 3 ."}
  assert len(homes) == 1


def test_banking77_csv_quoted_newlines_and_bad_rows(tmp_path):
  cats = [f"intent_{i}" for i in range(77)]
  train = 'text,category\r\n"two\nlines, and a comma",intent_0\r\nplain,intent_1\r\n' + "".join(
      f"q{i},intent_{i % 77}\r\n" for i in range(200))
  root = _write(tmp_path / "raw", {"categories.json": json.dumps(cats), "train.csv": train,
                                   "test.csv": "text,category\r\nt,intent_5\r\n"})
  records = rd.load("banking77", None, "train+validation", manual_dir=root,
                    data_dir=tmp_path / "d")
  assert len(records) == 202
  assert {"id": "train-00001", "text": "two\nlines, and a comma", "label": 0} in records
  _write(root, {"test.csv": "text,category\r\nt,intent_5\r\nu,not_an_intent\r\n"})
  with pytest.raises(ValueError, match=r"test\.csv: row 2 .*unknown label 'not_an_intent'"):
    rd.load("banking77", None, "test", manual_dir=root, data_dir=tmp_path / "e")
  _write(root, {"test.csv": "text,category\r\nt,intent_5,extra\r\n"})
  with pytest.raises(ValueError, match=r"test\.csv: row 1 .*expected 2 fields"):
    rd.load("banking77", None, "test", manual_dir=root, data_dir=tmp_path / "f")


def test_claudette_misaligned_labels(tmp_path):
  files = {}
  for docs in claudette_tos.DOCUMENTS.values():
    for doc in docs:
      files[f"Sentences/{doc}.txt"] = "a clause .\nanother clause .\n"
      files[f"Labels/{doc}.txt"] = "-1\n1\n"
  root = _write(tmp_path / "raw", files)
  records = rd.load("claudette_tos", "binary", "test", manual_dir=root, data_dir=tmp_path / "d")
  assert [r["label"] for r in records[:2]] == [0, 1] and len(records) == 20
  _write(root, {"Labels/Uber.txt": "-1\n"})
  with pytest.raises(ValueError, match=r"Uber\.txt: 1 labels for 2 sentences"):
    rd.load("claudette_tos", "binary", "test", manual_dir=root, data_dir=tmp_path / "e")
  _write(root, {"Labels/Uber.txt": "-1\n0\n"})
  with pytest.raises(ValueError, match=r"Uber\.txt:2: unknown label '0'"):
    rd.load("claudette_tos", "binary", "test", manual_dir=root, data_dir=tmp_path / "f")


def test_pubmedqa_test_label_mismatch(tmp_path):
  data = {str(i): {"QUESTION": f"Q{i}?", "CONTEXTS": ["c1", "c2"], "LONG_ANSWER": "la",
                   "final_decision": ["yes", "no", "maybe"][i % 3]} for i in range(40)}
  truth = {str(i): data[str(i)]["final_decision"] for i in range(20)}
  root = _write(tmp_path / "raw", {"ori_pqal.json": json.dumps(data),
                                   "test_ground_truth.json": json.dumps(truth)})
  meta = rd.info("pubmedqa_pqal", None, manual_dir=root, data_dir=tmp_path / "d")
  assert meta.splits == {"train": 18, "validation": 2, "test": 20}
  truth["3"] = "no"
  _write(root, {"test_ground_truth.json": json.dumps(truth)})
  with pytest.raises(ValueError, match=r"PMID 3 is 'no' here but 'yes'"):
    rd.info("pubmedqa_pqal", None, manual_dir=root, data_dir=tmp_path / "e")


@pytest.mark.parametrize("name,config", [
    ("financial_phrasebank", "allagree"), ("financial_phrasebank", "50agree"), ("banking77", None),
    ("claudette_tos", "multilabel"), ("nicta_piboso", None), ("pubmedqa_pqal", None)])
def test_download_urls_cover_exactly_the_files_read(name, config, raw_data_root, tmp_path):
  """The online path downloads the same files the offline path reads (it cannot run here)."""
  builder = rd.get_builder(name, config, data_dir=tmp_path)
  requested = []

  def files(rel):
    requested.append(rel)
    return raw_data_root / name / rel

  builder._read_splits(files)  # pylint: disable=protected-access
  urls = builder._urls()  # pylint: disable=protected-access
  assert sorted(urls) == sorted(set(requested))
  assert all(u.startswith("https://raw.githubusercontent.com/") and u.endswith(rel)
             for rel, u in urls.items())
