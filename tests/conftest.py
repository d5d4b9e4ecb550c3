"""Shared fixtures: the real raw data folder and one TFDS data_dir built once per session."""

import os
import pathlib

# Tests compile many tiny programs: skipping XLA's backend optimisations halves compile time and
# leaves results within the tests' tolerances. Set before jax is imported by any test module.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import pytest  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds

from research.data.builders import base

tfds.disable_progress_bar()


@pytest.fixture(scope="session")
def raw_data_root() -> pathlib.Path:
  """The folder holding <name>/ raw files ($RESEARCH_DATA_DIR, else ../shared/data)."""
  root = pathlib.Path(os.environ.get(base.ENV_DATA_DIR) or base.default_manual_dir("x")[0].parent)
  if not (root / "banking77").is_dir():
    pytest.fail(f"raw datasets not found in {root}; set {base.ENV_DATA_DIR} to the shared data dir")
  return root


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory, raw_data_root) -> pathlib.Path:
  """A TFDS data_dir shared by the session: each dataset config is built on first load."""
  del raw_data_root  # ensures the raw data is there before anything builds
  return tmp_path_factory.mktemp("tfds")
