"""Builds the example folders for results/own_data_example/ from the shared UNFAIR-ToS data.

  PYTHONPATH=. python results/own_data_example/export.py /tmp/own_data   # -> clean/, duplicated/

clean/: train.csv (1,000 clauses sampled from the UNFAIR-ToS train split, stratified, seed 0) and
test.csv (400 from its test split), columns text,label with label "fair" / "unfair" — what a user
would bring. duplicated/: the same files, then 50 train clauses copied into test and 40 train
clauses repeated in train with other case and punctuation — what the data checks must catch.
"""

import csv
import pathlib
import random
import sys

from research import data
from research.data import splits as splits_lib

SEED = 0


def _sample(records, n):
  ids = [r["id"] for r in records]
  labels = [r["label"] for r in records]
  keep = splits_lib.stratified_partition(ids, labels, [n / len(records), 1 - n / len(records)],
                                         SEED)[0]
  return [records[i] for i in sorted(keep)]


def _write(path: pathlib.Path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["text", "label"])
    w.writerows(rows)


def main(out: pathlib.Path):
  names = data.info("claudette_tos", "binary").label_names
  label = {i: ("unfair" if "unfair" in n.lower() and "not" not in n.lower() else "fair")
           for i, n in enumerate(names)}
  print(f"claudette_tos/binary label names {names} -> {label}")
  train = [(r["text"], label[r["label"]]) for r in
           _sample(data.load("claudette_tos", "binary", "train"), 1000)]
  test = [(r["text"], label[r["label"]]) for r in
          _sample(data.load("claudette_tos", "binary", "test"), 400)]
  _write(out / "clean" / "train.csv", train)
  _write(out / "clean" / "test.csv", test)
  rng = random.Random(SEED)
  leaked = rng.sample(train, 50)
  repeats = [(t.upper().rstrip(".") + " !", l) for t, l in rng.sample(train, 40)]
  _write(out / "duplicated" / "train.csv", train + repeats)
  _write(out / "duplicated" / "test.csv", test + leaked)
  for split, rows in (("train", train), ("test", test)):
    counts = {l: sum(1 for _, x in rows if x == l) for l in sorted(set(label.values()))}
    print(f"clean/{split}.csv: {len(rows)} rows {counts}")


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/own_data"))
