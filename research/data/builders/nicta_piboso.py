"""NICTA-PIBOSO: the role of each sentence in a medical abstract, 6 classes (medical)."""

import tensorflow_datasets as tfds

from research.data.builders import base

LABELS = ("population", "intervention", "background", "outcome", "study design", "other")
FILES = {"train": "train_clean.txt", "validation": "dev_clean.txt", "test": "test_clean.txt"}
_BASE = ("https://raw.githubusercontent.com/jind11/HSLN-Joint-Sentence-Classification/"
         "08f1442d582206ae537d30196c19cfa225f53e89/data/nicta_piboso/")


def read_abstracts(path) -> list[base.Example]:
  """Parses `###<abstract id>` headers followed by `label<TAB>sentence` lines.

  Returns:
    Examples in file order with ids `<abstract id>-<sentence number, 1-based>`.
  """
  examples, abstract, sent_no = [], None, 0
  for line_no, line in enumerate(base.read_text(path).split("\n"), start=1):
    line = line.rstrip("\r")
    if not line.strip():
      continue
    if line.startswith("###"):
      abstract, sent_no = line[3:].strip(), 0
      continue
    label, sep, text = line.partition("\t")
    if abstract is None or not sep or not text.strip():
      raise ValueError(f"{path}:{line_no}: expected '###<id>' or 'label<TAB>sentence' inside an "
                       f"abstract, got {line[:80]!r}")
    sent_no += 1
    examples.append({"id": f"{abstract}-{sent_no:02d}", "text": text.strip(),
                     "label": base.label_index(LABELS, label.strip(), f"{path}:{line_no}")})
  return examples


class NictaPiboso(base.DomainBuilder):
  """NICTA-PIBOSO (single-label version of Jin & Szolovits 2018), official train/dev/test."""

  HOMEPAGE = "https://github.com/jind11/HSLN-Joint-Sentence-Classification"
  LICENSE = "MIT (repository licence; the original ALTA-NICTA data states none)"
  DESCRIPTION = ("Sentences of MEDLINE abstracts labelled population/intervention/background/"
                 "outcome/study design/other; ids are <abstract id>-<sentence number>.")
  CITATION = """@article{kim2011automatic,
  title={Automatic classification of sentences to support Evidence Based Medicine},
  author={Kim, Su Nam and Martinez, David and Cavedon, Lawrence and Yencken, Lars},
  journal={BMC Bioinformatics}, volume={12}, number={Suppl 2}, pages={S5}, year={2011}
}
@inproceedings{jin2018hierarchical,
  title={Hierarchical Neural Networks for Sequential Sentence Classification in Medical Scientific Abstracts},
  author={Jin, Di and Szolovits, Peter},
  booktitle={Proceedings of EMNLP}, year={2018}
}"""

  def _label_feature(self) -> tfds.features.FeatureConnector:
    return tfds.features.ClassLabel(names=LABELS)

  def _urls(self) -> dict[str, str]:
    return {f: _BASE + f for f in FILES.values()}

  def _read_splits(self, files: base.FileGetter) -> dict[str, list[base.Example]]:
    return {split: read_abstracts(files(f)) for split, f in FILES.items()}
