"""Prints the dataset stats table (examples, classes, label counts, token lengths) per split.

  python -m experiments.datasets                                  # every dataset and config
  python -m experiments.datasets --datasets=banking77,claudette_tos/multilabel --max_length=256
  python -m experiments.datasets --datasets='local_text/text=sentence,label=intent' \
      --manual_dir=<folder>            # your own files; the column spec may contain commas
"""

import argparse

import tensorflow_datasets as tfds

from research.data import loading
from research.data import stats


def parse_datasets(value: str) -> list[tuple[str, str | None]]:
  """"a,b/cfg,local_text/text=x,label=y" -> [(name, config)]. Splits at commas, but an item that
  is no dataset name (like "label=y") continues the previous item's config: a local_text column
  spec holds commas."""
  out: list[tuple[str, str | None]] = []
  for item in filter(None, (s.strip() for s in value.split(","))):
    name, _, config = item.partition("/")
    if name not in loading.ALL_NAMES and out and out[-1][0] == "local_text" and "=" in item:
      prev_name, prev_cfg = out[-1]
      out[-1] = (prev_name, f"{prev_cfg},{item}" if prev_cfg else item)
    elif name not in loading.ALL_NAMES:
      raise ValueError(f"--datasets item {item!r}: unknown dataset {name!r}; known: "
                       f"{', '.join(loading.ALL_NAMES)} (a local_text spec is "
                       "'local_text/text=...,label=...')")
    else:
      out.append((name, config or None))
  return out


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
    try:
      datasets = parse_datasets(args.datasets)
    except ValueError as e:
      p.error(str(e))
  else:
    datasets = stats.all_configs()
  if args.manual_dir and len({name for name, _ in datasets}) > 1:
    p.error("--manual_dir points at one dataset's files; pass a single dataset with it")
  tfds.disable_progress_bar()
  print(stats.stats_table(datasets, tokenizer_path=args.tokenizer, max_length=args.max_length,
                          manual_dir=args.manual_dir, data_dir=args.data_dir))


if __name__ == "__main__":
  main()
