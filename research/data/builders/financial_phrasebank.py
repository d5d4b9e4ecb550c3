"""Financial PhraseBank v1.0: 3-class sentiment of financial news sentences (BFSI)."""

from collections import Counter

import tensorflow_datasets as tfds

from research.data import splits as splits_lib
from research.data.builders import base

LABELS = ("negative", "neutral", "positive")
SPLIT_SEED = 0
FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
# config -> file; configs are the annotator agreement levels (nested: allagree is the cleanest).
FILES = {
    "allagree": "Sentences_AllAgree.txt",
    "75agree": "Sentences_75Agree.txt",
    "66agree": "Sentences_66Agree.txt",
    "50agree": "Sentences_50Agree.txt",
}
_WYCHEN = ("https://raw.githubusercontent.com/wychen-null/project_nlp_cuda/"
           "1ea075323700e41e09f22fcc1682765177945f08/data/FinancialPhraseBank-v1.0/")
URLS = {
    "Sentences_AllAgree.txt": (
        "https://raw.githubusercontent.com/Alexis-Fauxbaton/Financial-News-Sentiment-Analysis/"
        "c1b73e2c858aa0975ec0279db15a8ac033173130/FinancialPhraseBank/Sentences_AllAgree.txt"),
    **{f: _WYCHEN + f for f in ("Sentences_75Agree.txt", "Sentences_66Agree.txt",
                                "Sentences_50Agree.txt")},
}


class FinancialPhrasebank(base.DomainBuilder):
  """Financial PhraseBank with a seeded, stratified 80/10/10 split (no official split exists).

  Sentences that occur more than once in a file stay in one split (no train/test leak); their count
  is recorded in `info.metadata["duplicate_sentences"]`.
  """

  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=f"Sentences with {n} annotators")
                     for n in FILES]
  HOMEPAGE = "https://www.researchgate.net/publication/251231364_FinancialPhraseBank-v10"
  LICENSE = "CC BY-NC-SA 3.0"
  DESCRIPTION = ("Financial news sentences labelled negative/neutral/positive from an investor's "
                 "view; split 80/10/10 stratified by label with seed 0 (sha256 order).")
  CITATION = """@article{malo2014good,
  title={Good debt or bad debt: Detecting semantic orientations in economic texts},
  author={Malo, Pekka and Sinha, Ankur and Korhonen, Pekka and Wallenius, Jyrki and Takala, Pyry},
  journal={Journal of the Association for Information Science and Technology},
  volume={65}, number={4}, pages={782--796}, year={2014}
}"""

  def _label_feature(self) -> tfds.features.FeatureConnector:
    return tfds.features.ClassLabel(names=LABELS)

  def _urls(self) -> dict[str, str]:
    return {FILES[self.builder_config.name]: URLS[FILES[self.builder_config.name]]}

  def _read_splits(self, files: base.FileGetter) -> dict[str, list[base.Example]]:
    name = self.builder_config.name
    path = files(FILES[name])
    examples = []
    # latin-1 decodes any byte, so the file's original mojibake is kept as is.
    for line_no, line in enumerate(base.read_text(path, "latin-1").split("\n"), start=1):
      if not line.strip():
        continue  # only the final newline; a blank line carries no example
      text, sep, label = line.rstrip("\r").rpartition("@")
      if not sep or not text.strip():
        raise ValueError(f"{path}:{line_no}: expected 'sentence@label', got {line[:80]!r}")
      examples.append({"id": f"{name}-{line_no:05d}", "text": text.strip(),
                       "label": base.label_index(LABELS, label.strip(), f"{path}:{line_no}")})
    texts = [ex["text"] for ex in examples]
    self.info.metadata["duplicate_sentences"] = sum(n - 1 for n in Counter(texts).values() if n > 1)
    parts = splits_lib.stratified_partition(
        [ex["id"] for ex in examples], [ex["label"] for ex in examples],
        list(FRACTIONS.values()), SPLIT_SEED, groups=texts)
    return {split: [examples[i] for i in idx] for split, idx in zip(FRACTIONS, parts)}
