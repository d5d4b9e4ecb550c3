"""Datasets: TFDS builders (offline from manual_dir), `load`/`info`, and the batch pipeline.

    records = research.data.load("banking77", None, "train")   # [{"id", "text", "label"}, ...]
    meta = research.data.info("claudette_tos", "multilabel")    # num_classes, label_names, ...
"""

from research.data.loading import ALL_NAMES
from research.data.loading import DatasetSummary
from research.data.loading import get_builder
from research.data.loading import info
from research.data.loading import load
from research.data.loading import prepare
