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


def _switched(config_file, *overrides):
  """A config file loaded as the command line would, with --config.* overrides."""
  from absl import flags
  from ml_collections import config_flags
  from experiments import cli
  argv = ["prog", f"--config={config_file}", *overrides]
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
  fv(argv)
  return holder.value, cli.config_overrides(flag_values=fv)


def test_a_task_config_switched_to_local_text_is_named_after_the_folder(tmp_path, capsys):
  folder = str(tmp_path / "complaints")
  config, given = _switched("configs/finetune_phrasebank_allagree.py",
                            "--config.data.name=local_text", f"--config.data.manual_dir={folder}")
  assert given == {"data.name", "data.manual_dir"}
  assert len(local_text.name_after_folder(config, given)) == 3
  assert (config.name, config.tags.task, config.workdir) == (
      "complaints", "complaints", "runs/complaints/full")
  assert "named after the data instead" in capsys.readouterr().err
  # A student: its teacher is looked for under the folder's name too; fields the user set stay.
  config, given = _switched("configs/distill_phrasebank.py", "--config.data.name=local_text",
                            "--config.workdir=runs/mine/student")
  local_text.name_after_folder(config, given)
  assert (config.name, config.tags.task, config.workdir, config.distill.teacher) == (
      "local_text_kd_soft", "local_text", "runs/mine/student", "runs/local_text/full")
  # The user named the task, or data.name was not switched on the command line: unchanged.
  config, given = _switched("configs/finetune_phrasebank_allagree.py",
                            "--config.data.name=local_text", "--config.tags.task=mine")
  assert local_text.name_after_folder(config, given) == []
  assert (config.name, config.tags.task) == ("phrasebank_allagree", "mine")
  config, _ = _switched("configs/finetune_phrasebank_allagree.py", "--config.data.name=local_text")
  assert local_text.name_after_folder(config, set()) == []
  assert config.tags.task == "phrasebank_allagree"
