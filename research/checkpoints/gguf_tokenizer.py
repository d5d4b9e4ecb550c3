"""A byte-level BPE tokenizer and chat template built from a GGUF file's metadata.

Reads the metadata with the `gguf` package and builds a `tokenizers` fast tokenizer, so nothing here
imports transformers (whose GGUF readers import torch):

    tok = load_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf")
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    ids = tok.encode(prompt)              # special tokens such as <|im_start|> stay whole
    tok.decode(ids), tok.stop_ids

Pre-tokenization follows llama.cpp's `tokenizer.ggml.pre` names (the split the merges were learned
with); tests/fixtures/make_tokenizer_golden.py checks the ids against transformers' GGUF tokenizer.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
from typing import Any, Sequence

import gguf
import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

PathLike = str | os.PathLike[str]

_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
_LLAMA3_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
                 r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# tokenizer.ggml.pre -> the regexes llama.cpp applies in order (each splits the previous pieces).
PRE_TOKENIZER_SPLITS = {
    "default": (_GPT2_SPLIT,),
    "gpt2": (_GPT2_SPLIT,),
    "smollm": (r"\p{N}", _GPT2_SPLIT),        # digits one by one, then GPT-2
    "starcoder": (r"\p{N}", _GPT2_SPLIT),
    "qwen2": (_QWEN2_SPLIT,),
    "deepseek-r1-qwen": (_QWEN2_SPLIT,),
    "llama-bpe": (_LLAMA3_SPLIT,),
    "llama3": (_LLAMA3_SPLIT,),
}

# llama.cpp's token types.
_CONTROL, _USER_DEFINED = 3, 4
# Besides eos/eot/eom, llama.cpp ends generation at these end-of-turn tokens when the vocab has them.
_END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end|>",
                "<end_of_turn>", "<|end_of_text|>")


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character map."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
  chars = list(keep)
  extra = 0
  for b in range(256):
    if b not in keep:
      keep.append(b)
      chars.append(256 + extra)
      extra += 1
  return dict(zip(keep, map(chr, chars)))


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def _strings(reader: gguf.GGUFReader, key: str) -> list[str]:
  field = reader.fields[key]
  return [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
  if pre not in PRE_TOKENIZER_SPLITS:
    raise ValueError(f"GGUF tokenizer.ggml.pre={pre!r} is not supported; known: "
                     f"{sorted(PRE_TOKENIZER_SPLITS)} (add its regexes to PRE_TOKENIZER_SPLITS)")
  splits = [pre_tokenizers.Split(tokenizers.Regex(r), behavior="isolated")
            for r in PRE_TOKENIZER_SPLITS[pre]]
  return pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                    use_regex=False)])


@dataclasses.dataclass(frozen=True)
class GGUFTokenizer:
  """Encode/decode and chat-template rendering for one GGUF vocabulary."""
  backend: tokenizers.Tokenizer
  bos_id: int | None
  eos_id: int | None
  pad_id: int                  # padding id from the file, else eos (padding is always masked)
  stop_ids: tuple[int, ...]    # generation ends at any of these
  chat_template: str | None
  add_bos: bool                # the file asks for BOS before every encoded text
  pre: str
  vocab_size: int

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`; special tokens written in the text (e.g. <|im_start|>) stay whole."""
    ids = self.backend.encode(text, add_special_tokens=False).ids
    return [self.bos_id, *ids] if self.add_bos and self.bos_id is not None else ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    rows = [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]
    return [[self.bos_id, *r] for r in rows] if self.add_bos and self.bos_id is not None else rows

  def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token(self, index: int) -> str:
    return self.backend.id_to_token(int(index))

  def apply_chat_template(self, messages: Sequence[dict[str, str]],
                          add_generation_prompt: bool = True) -> str:
    """The prompt text the file's jinja chat template renders for `messages`."""
    if not self.chat_template:
      raise ValueError("this GGUF has no tokenizer.chat_template; pick an instruct model's GGUF")
    for i, m in enumerate(messages):
      if not isinstance(m, dict) or not {"role", "content"} <= set(m):
        raise ValueError(f"chat message {i} must be a dict with 'role' and 'content', got {m!r}")
    return _compiled_template(self.chat_template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt,
        bos_token=self.token(self.bos_id) if self.bos_id is not None else "",
        eos_token=self.token(self.eos_id) if self.eos_id is not None else "")


@functools.lru_cache(maxsize=8)
def _compiled_template(source: str):
  """Jinja as transformers renders chat templates: sandboxed, trim/lstrip blocks, loop controls."""
  import jinja2  # pylint: disable=g-import-not-at-top
  from jinja2 import sandbox  # pylint: disable=g-import-not-at-top

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=["jinja2.ext.loopcontrols"])
  env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
      x, indent=indent, ensure_ascii=ensure_ascii)
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(source)


def load_tokenizer(gguf_path: PathLike) -> GGUFTokenizer:
  """Builds the tokenizer a GGUF file describes (byte-level BPE, `tokenizer.ggml.model` "gpt2").

  Args:
    gguf_path: path of a .gguf file (only its metadata is read).

  Returns:
    A GGUFTokenizer.
  """
  path = os.fspath(gguf_path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GGUF file {path!r} not found; pass the path of a .gguf file")
  reader = gguf.GGUFReader(path, "r")
  kind = _field(reader, "tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(f"{path}: tokenizer.ggml.model={kind!r}; only byte-level BPE ('gpt2') GGUF "
                     "vocabularies are supported")
  tokens = _strings(reader, "tokenizer.ggml.tokens")
  types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
  merges = [tuple(m.split(" ", 1)) for m in _strings(reader, "tokenizer.ggml.merges")]
  pre = _field(reader, "tokenizer.ggml.pre", "default")

  # Real tokens are spelled in GPT-2's byte alphabet; anything else is re-spelled byte by byte.
  spelling = _byte_alphabet()
  alphabet = set(spelling.values())
  spelled = [t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))
             for t in tokens]
  backend = tokenizers.Tokenizer(models.BPE(
      vocab={t: i for i, t in enumerate(spelled)}, merges=merges, fuse_unk=False,
      continuing_subword_prefix="", end_of_word_suffix=""))
  backend.pre_tokenizer = _pre_tokenizer(pre)
  backend.decoder = decoders.ByteLevel()
  # Control tokens match whole and are special; a "control" token outside the byte alphabet is a
  # converter mislabel, skipped as transformers does. User-defined tokens match whole too.
  backend.add_special_tokens([
      tokenizers.AddedToken(t, special=True, normalized=False)
      for t, ty in zip(tokens, types) if ty == _CONTROL and set(t) <= alphabet])
  backend.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False)
                      for t, ty in zip(tokens, types) if ty == _USER_DEFINED])

  def token_id(key):
    value = _field(reader, f"tokenizer.ggml.{key}")
    return None if value is None else int(value)

  bos, eos, pad = token_id("bos_token_id"), token_id("eos_token_id"), token_id("padding_token_id")
  stops = [i for i in (eos, token_id("eot_token_id"), token_id("eom_token_id")) if i is not None]
  index = {t: i for i, t in enumerate(tokens)}
  stops += [index[t] for t in _END_OF_TURN if t in index and types[index[t]] == _CONTROL]
  return GGUFTokenizer(
      backend=backend, bos_id=bos, eos_id=eos,
      pad_id=pad if pad is not None else (eos if eos is not None else 0),
      stop_ids=tuple(dict.fromkeys(stops)),
      chat_template=_field(reader, "tokenizer.chat_template"),
      add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
      pre=pre, vocab_size=len(tokens))
