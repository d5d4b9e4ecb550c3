"""local_text: a user's CSV/JSONL folder as a dataset, with carving and clear errors."""

import json

import pytest

import research.data as rd
from research.data import local_text


def _rows(n, labels=("neg", "pos")):
  return [{"sentence": f"text {i} ,with comma", "intent": labels[i % len(labels)], "uid": f"u{i}"}
          for i in range(n)]


def _csv(path, rows, cols=("sentence", "intent", "uid")):
  lines = [",".join(cols)] + [",".join(json.dumps(r[c]) for c in cols) for r in rows]
  path.write_text("\n".join(lines) + "\n")


def test_csv_with_carved_splits(tmp_path):
  _csv(tmp_path / "train.csv", _rows(40))
  spec = "text=sentence,label=intent,id=uid"
  meta = rd.info("local_text", spec, manual_dir=tmp_path, data_dir=tmp_path / "d")
  assert meta.splits == {"train": 32, "validation": 4, "test": 4}
  assert meta.label_names == ("neg", "pos") and meta.carved_validation
  records = rd.load("local_text", spec, "validation", manual_dir=tmp_path, data_dir=tmp_path / "d")
  assert records[0]["text"].startswith("text ") and records[0]["id"].startswith("u")
  assert sorted(r["label"] for r in records) == [0, 0, 1, 1]


def test_jsonl_pairs_numeric_labels_and_rebuild_on_change(tmp_path):
  rows = [{"text": f"q{i}", "ctx": f"c{i}", "label": i % 3} for i in range(30)]
  for split, part in (("train", rows[:20]), ("dev", rows[20:25]), ("test", rows[25:])):
    (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in part) + "\n")
  spec = "text_pair=ctx"
  meta = rd.info("local_text", spec, manual_dir=tmp_path, data_dir=tmp_path / "d")
  assert meta.splits == {"train": 20, "validation": 5, "test": 5}
  assert meta.label_names == ("0", "1", "2") and meta.has_text_pair
  assert not meta.carved_validation
  first = rd.load("local_text", spec, "test", manual_dir=tmp_path, data_dir=tmp_path / "d")[0]
  assert first == {"id": "test-000001", "text": "q25", "text_pair": "c25", "label": 1}
  (tmp_path / "test.jsonl").write_text(json.dumps({"text": "new", "ctx": "x", "label": 2}) + "\n")
  again = rd.load("local_text", spec, "test", manual_dir=tmp_path, data_dir=tmp_path / "d")
  assert [r["text"] for r in again] == ["new"]  # edited files rebuild, never a stale cache


def test_errors_are_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="no train file"):
    rd.load("local_text", None, "train", manual_dir=tmp_path)
  _csv(tmp_path / "train.csv", _rows(10))
  with pytest.raises(ValueError, match=r"lacks column\(s\) \['text', 'label'\]"):
    rd.load("local_text", None, "train", manual_dir=tmp_path, data_dir=tmp_path / "d")
  _csv(tmp_path / "test.csv", _rows(4, labels=("neg", "meh")))
  with pytest.raises(ValueError, match=r"test\.csv: row 2 .*unknown label 'meh'"):
    rd.load("local_text", "text=sentence,label=intent", "train", manual_dir=tmp_path,
            data_dir=tmp_path / "d")
  (tmp_path / "test.csv").write_text("sentence,intent,uid\n\"a\",\"neg\"\n")
  with pytest.raises(ValueError, match=r"row 1 .*fewer fields"):
    rd.load("local_text", "text=sentence,label=intent", "train", manual_dir=tmp_path,
            data_dir=tmp_path / "d")
  with pytest.raises(ValueError, match="spec item 'colour=red'"):
    local_text.LocalTextSpec.parse("text=a,colour=red")
