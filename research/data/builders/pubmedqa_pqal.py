"""PubMedQA PQA-L: yes/no/maybe answers to biomedical research questions (medical QA)."""

import json

import tensorflow_datasets as tfds

from research.data import splits as splits_lib
from research.data.builders import base

LABELS = ("yes", "no", "maybe")
SPLIT_SEED = 0
VALIDATION_FRACTION = 0.1  # of the 500 non-test instances, stratified (one of 10 CV folds' size)
_BASE = ("https://raw.githubusercontent.com/pubmedqa/pubmedqa/"
         "1cbae8e92f72f20c8d3747cbb3bf5bc53554d997/data/")
URLS = {f: _BASE + f for f in ("ori_pqal.json", "test_ground_truth.json")}


class PubmedqaPqal(base.DomainBuilder):
  """PubMedQA PQA-L: official 500 test; train/validation 450/50 from the other 500.

  text = question, text_pair = the abstract's contexts joined by spaces; `contexts` and
  `long_answer` (the abstract's conclusion) are kept for generative use.
  """

  HOMEPAGE = "https://pubmedqa.github.io/"
  CARVED_VALIDATION = True
  LICENSE = "MIT"
  DESCRIPTION = ("1,000 expert-labelled PubMedQA instances: question (paper title), abstract "
                 "contexts without the conclusion, long answer (the conclusion) and a yes/no/maybe "
                 "decision. Official test split; validation is 10% of the rest (seed 0).")
  CITATION = """@inproceedings{jin2019pubmedqa,
  title={PubMedQA: A Dataset for Biomedical Research Question Answering},
  author={Jin, Qiao and Dhingra, Bhuwan and Liu, Zhengping and Cohen, William W. and Lu, Xinghua},
  booktitle={Proceedings of EMNLP-IJCNLP}, pages={2567--2577}, year={2019}
}"""

  def _label_feature(self) -> tfds.features.FeatureConnector:
    return tfds.features.ClassLabel(names=LABELS)

  def _extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
    return {"text_pair": tfds.features.Text(), "long_answer": tfds.features.Text(),
            "contexts": tfds.features.Sequence(tfds.features.Text())}

  def _urls(self) -> dict[str, str]:
    return dict(URLS)

  def _read_splits(self, files: base.FileGetter) -> dict[str, list[base.Example]]:
    data_path, test_path = files("ori_pqal.json"), files("test_ground_truth.json")
    data = json.loads(base.read_text(data_path))
    test_labels = json.loads(base.read_text(test_path))
    examples = {}
    for pmid, item in data.items():
      where = f"{data_path}: instance {pmid}"
      try:
        question, contexts = item["QUESTION"], list(item["CONTEXTS"])
        long_answer, decision = item["LONG_ANSWER"], item["final_decision"]
      except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: missing field {e}") from None
      if not question.strip() or not contexts:
        raise ValueError(f"{where}: empty QUESTION or CONTEXTS")
      examples[pmid] = {"id": pmid, "text": question.strip(), "text_pair": " ".join(contexts),
                        "contexts": contexts, "long_answer": long_answer,
                        "label": base.label_index(LABELS, decision, where)}
    for pmid, decision in test_labels.items():
      if pmid not in examples:
        raise ValueError(f"{test_path}: test PMID {pmid} is not in {data_path}")
      if LABELS[examples[pmid]["label"]] != decision:
        raise ValueError(f"{test_path}: PMID {pmid} is {decision!r} here but "
                         f"{LABELS[examples[pmid]['label']]!r} in {data_path}")
    test = [ex for pmid, ex in examples.items() if pmid in test_labels]
    pool = [ex for pmid, ex in examples.items() if pmid not in test_labels]
    fit, val = splits_lib.stratified_partition(
        [ex["id"] for ex in pool], [ex["label"] for ex in pool],
        [1 - VALIDATION_FRACTION, VALIDATION_FRACTION], SPLIT_SEED)
    return {"train": [pool[i] for i in fit], "validation": [pool[i] for i in val], "test": test}
