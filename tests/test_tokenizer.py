"""Tokenizer wrapper: offline fast tokenizer, int32 numpy batches, padding and pairs."""

import pathlib

import numpy as np
import pytest

from research import tokenizer as tok

GOLDEN = pathlib.Path(__file__).parent / "fixtures" / "minilm_golden.npz"


@pytest.fixture(scope="module")
def tokenizer():
  return tok.load_tokenizer("all-MiniLM-L6-v2")


def test_encode_pads_to_longest_and_to_fixed_length(tokenizer):
  texts = ["Revenue rose.", "The patient was discharged on day three."]
  batch = tok.encode(tokenizer, texts, max_length=32)
  assert sorted(batch) == ["attention_mask", "input_ids", "token_type_ids"]
  assert all(v.dtype == np.int32 for v in batch.values())
  lengths = batch["attention_mask"].sum(1)
  assert batch["input_ids"].shape == (2, lengths.max())
  assert batch["input_ids"][0, 0] == tokenizer.cls_token_id
  assert batch["input_ids"][0, lengths[0] - 1] == tokenizer.sep_token_id
  assert (batch["input_ids"][0, lengths[0]:] == tokenizer.pad_token_id).all()
  fixed = tok.encode(tokenizer, texts, max_length=32, pad_to=16)
  assert fixed["input_ids"].shape == (2, 16)
  np.testing.assert_array_equal(fixed["input_ids"][:, :lengths.max()], batch["input_ids"])


def test_encode_truncates_and_marks_pairs(tokenizer):
  batch = tok.encode(tokenizer, ["a b c d e f g h i j k l"], ["x y z"], max_length=8)
  assert batch["input_ids"].shape == (1, 8)
  tt = batch["token_type_ids"][0]
  assert tt[0] == 0 and tt[-1] == 1 and set(tt.tolist()) == {0, 1}


def test_encode_matches_golden_fixture_ids(tokenizer):
  golden = np.load(GOLDEN)
  assert golden["input_ids"][1, :5].tolist() == tok.encode(
      tokenizer, ["Shares fell."], max_length=40)["input_ids"][0].tolist()


def test_encode_errors(tokenizer):
  with pytest.raises(ValueError, match="pad_to=4 is shorter"):
    tok.encode(tokenizer, ["a fairly long sentence about bonds"], max_length=32, pad_to=4)
  with pytest.raises(ValueError, match="2 texts but 1 text_pairs"):
    tok.encode(tokenizer, ["a", "b"], ["c"], max_length=8)
