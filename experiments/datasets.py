"""Prints the dataset stats table (examples, classes, label counts, token lengths) per split.

  python -m experiments.datasets                                  # every dataset and config
  python -m experiments.datasets --datasets=banking77,claudette_tos/multilabel --max_length=256
"""

import argparse

import tensorflow_datasets as tfds

from research.data import stats


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--datasets", default="",
                 help="comma list of name or name/config; empty: every built-in config")
  p.add_argument("--tokenizer", default=None,
                 help="tokenizer folder (default: the offline all-MiniLM-L6-v2)")
  p.add_argument("--max_length", type=int, default=128,
                 help="report how many examples exceed this many tokens")
  p.add_argument("--manual_dir", default=None,
                 help="raw files folder (only with one dataset; default $RESEARCH_DATA_DIR/<name>)")
  p.add_argument("--data_dir", default=None, help="TFDS data dir for built datasets")
  args = p.parse_args(argv)
  if args.datasets:
    datasets = [(item.partition("/")[0], item.partition("/")[2] or None)
                for item in args.datasets.split(",") if item]
  else:
    datasets = stats.all_configs()
  if args.manual_dir and len({name for name, _ in datasets}) > 1:
    p.error("--manual_dir points at one dataset's files; pass a single dataset with it")
  tfds.disable_progress_bar()
  print(stats.stats_table(datasets, tokenizer_path=args.tokenizer, max_length=args.max_length,
                          manual_dir=args.manual_dir, data_dir=args.data_dir))


if __name__ == "__main__":
  main()
