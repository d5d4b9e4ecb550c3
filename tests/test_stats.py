"""Dataset stats table and its command (experiments/datasets.py)."""

from experiments import datasets as datasets_cli
from research.data import pipeline
from research.data import stats


def test_pubmedqa_rows(tfds_data_dir):
  rows = stats.dataset_stats("pubmedqa_pqal", None, tokenizer=pipeline.load_tokenizer(),
                             max_length=512, data_dir=tfds_data_dir)
  by_split = {r.split: r for r in rows}
  assert list(by_split) == ["train", "validation", "test", "train+validation", "all"]
  assert by_split["train+validation"].label_counts == {"yes": 276, "no": 169, "maybe": 55}
  assert by_split["all"].examples == 1000 and by_split["all"].num_classes == 3
  assert 100 < by_split["all"].tokens_p50 < by_split["all"].tokens_p95 <= by_split["all"].tokens_max
  assert 0 < by_split["all"].over_max_length < 1000  # question + abstract: some exceed 512


def test_command_prints_table(tfds_data_dir, capsys):
  datasets_cli.main(["--datasets=financial_phrasebank/allagree,nicta_piboso",
                     f"--data_dir={tfds_data_dir}", "--max_length=64"])
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith("| dataset | config | split | examples |") and "| >64 |" in out[0]
  assert ("| financial_phrasebank | allagree | all | 2,264 | 3 | negative 303, neutral 1,391, "
          "positive 570 |") in "\n".join(out)
  assert any(line.startswith("| nicta_piboso | - | test | 1,991 | 6 | population 120,")
             for line in out)
  assert len(out) == 2 + 4 + 4
