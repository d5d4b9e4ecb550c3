"""CLAUDETTE Terms of Service (LexGLUE UNFAIR-ToS): potentially unfair clause detection (legal)."""

import tensorflow_datasets as tfds

from research.data.builders import base

# LexGLUE splits by document, ordered by ToS release year: 30 train, 10 validation, 10 test.
DOCUMENTS = {
    "train": ("Tinder", "Betterpoints_UK", "Deliveroo", "9gag", "Booking", "YouTube", "Yahoo",
              "TrueCaller", "Skype", "WorldOfWarcraft", "Viber", "Microsoft", "Instagram", "Rovio",
              "Onavo", "Moves-app", "Syncme", "Google", "Facebook", "Vivino", "Atlas", "Dropbox",
              "musically", "Spotify", "Endomondo", "WhatsApp", "Zynga", "PokemonGo", "Masquerade",
              "Skyscanner"),
    "validation": ("Nintendo", "Airbnb", "Crowdtangle", "TripAdvisor", "Supercell", "Headspace",
                   "Fitbit", "Vimeo", "Oculus", "LindenLab"),
    "test": ("Academia", "Amazon", "Netflix", "Snap", "Twitter", "LinkedIn", "Duolingo", "Uber",
             "Evernote", "eBay"),
}
BINARY_LABELS = ("fair", "unfair")
# LexGLUE UNFAIR-ToS class order, with the CLAUDETTE folder that holds each.
CATEGORIES = (
    ("limitation_of_liability", "Labels_LTD"),
    ("unilateral_termination", "Labels_TER"),
    ("unilateral_change", "Labels_CH"),
    ("content_removal", "Labels_CR"),
    ("contract_by_using", "Labels_USE"),
    ("choice_of_law", "Labels_LAW"),
    ("jurisdiction", "Labels_J"),
    ("arbitration", "Labels_A"),
)
_BASE = ("https://raw.githubusercontent.com/tulane-cmps6730/project-legal/"
         "338767f181e0b4f151d7ed0262b150e1b8a1e097/data/ToS/")


def _read_lines(path) -> list[str]:
  text = base.read_text(path)
  lines = text.split("\n")
  return lines[:-1] if text.endswith("\n") else lines


class ClaudetteTos(base.DomainBuilder):
  """CLAUDETTE ToS sentences with the LexGLUE document split.

  Configs: `binary` (fair/unfair, from `Labels/`) and `multilabel` (the 8 LexGLUE unfairness
  categories; a sentence has zero or more).
  """

  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="binary", description="Potentially unfair (1) or not (0)."),
      tfds.core.BuilderConfig(name="multilabel", description="8 unfairness categories (LexGLUE)."),
  ]
  HOMEPAGE = "http://claudette.eui.eu/"
  LICENSE = "Unknown (no licence stated with the corpus); research use, cite Lippi et al. 2019."
  DESCRIPTION = ("Sentences of 50 online Terms of Service (lower-cased, tokenised) with unfair-clause "
                 "labels; LexGLUE UNFAIR-ToS document split (train 5,532 / validation 2,275 / "
                 "test 1,607).")
  CITATION = """@article{lippi2019claudette,
  title={CLAUDETTE: an automated detector of potentially unfair clauses in online terms of service},
  author={Lippi, Marco and Pa{\\l}ka, Przemys{\\l}aw and Contissa, Giuseppe and Lagioia, Francesca and Micklitz, Hans-Wolfgang and Sartor, Giovanni and Torroni, Paolo},
  journal={Artificial Intelligence and Law}, volume={27}, pages={117--139}, year={2019}
}
@inproceedings{chalkidis2022lexglue,
  title={LexGLUE: A Benchmark Dataset for Legal Language Understanding in English},
  author={Chalkidis, Ilias and Jana, Abhik and Hartung, Dirk and Bommarito, Michael and Androutsopoulos, Ion and Katz, Daniel Martin and Aletras, Nikolaos},
  booktitle={Proceedings of the 60th Annual Meeting of the Association for Computational Linguistics},
  year={2022}
}"""

  def _label_folders(self) -> list[str]:
    if self.builder_config.name == "binary":
      return ["Labels"]
    return [folder for _, folder in CATEGORIES]

  def _label_feature(self) -> tfds.features.FeatureConnector:
    if self.builder_config.name == "binary":
      return tfds.features.ClassLabel(names=BINARY_LABELS)
    return tfds.features.Sequence(tfds.features.ClassLabel(names=[n for n, _ in CATEGORIES]))

  def _urls(self) -> dict[str, str]:
    rels = [f"{folder}/{doc}.txt" for docs in DOCUMENTS.values() for doc in docs
            for folder in ["Sentences", *self._label_folders()]]
    return {rel: _BASE + rel for rel in rels}

  def _read_splits(self, files: base.FileGetter) -> dict[str, list[base.Example]]:
    folders = self._label_folders()
    out = {}
    for split, docs in DOCUMENTS.items():
      examples = []
      for doc in docs:
        sent_path = files(f"Sentences/{doc}.txt")
        sentences = _read_lines(sent_path)
        flags = []  # per label folder: one bool per sentence
        for folder in folders:
          path = files(f"{folder}/{doc}.txt")
          lines = _read_lines(path)
          if len(lines) != len(sentences):
            raise ValueError(f"{path}: {len(lines)} labels for {len(sentences)} sentences in "
                             f"{sent_path}; the files must be line-aligned.")
          for line_no, v in enumerate(lines, start=1):
            if v.strip() not in ("1", "-1"):
              raise ValueError(f"{path}:{line_no}: unknown label {v!r}; expected '1' or '-1'")
          flags.append([v.strip() == "1" for v in lines])
        for i, sentence in enumerate(sentences):
          if not sentence.strip():
            raise ValueError(f"{sent_path}:{i + 1}: empty sentence")
          on = [c for c, f in enumerate(flags) if f[i]]
          label = int(bool(on)) if self.builder_config.name == "binary" else on
          examples.append({"id": f"{doc}-{i + 1:04d}", "text": sentence.strip(), "label": label})
      out[split] = examples
    return out
