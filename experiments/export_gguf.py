"""Exports a decoder student to GGUF for llama.cpp and checks the file reads back the same.

  python -m experiments.export_gguf --run_dir runs/sft/phrasebank_allagree/lora_r8_lr2e-4 \
      --out runs/gguf/sft.gguf
  python -m experiments.export_gguf --source smollm2-135m-instruct --layers 0,10,20,29 \
      --out runs/gguf/smollm2_L4of30.gguf [--qtype Q8_0]

The student is a decoder run's best params (LoRA merged) or a model source cut to --layers (a
layer-copied student before distillation). The tokenizer metadata is copied from --template
(default: the run's or the source's own GGUF). After writing, the file is reloaded with our GGUF
importer and its logits on a prompt compared with the student's (F32: equal to float rounding),
and the tokenizer compared with the template's; a JSON summary is printed (and written with
--summary).
"""

from __future__ import annotations

import json

from absl import flags
import numpy as np

from experiments import cli

_RUN_DIR = flags.DEFINE_string("run_dir", None, "A decoder run directory (best params).")
_SOURCE = flags.DEFINE_string("source", None, "A decoder model source (GGUF path / known name / "
                              "HF folder) instead of a run directory.")
_LAYERS = flags.DEFINE_list("layers", [], "Keep only these layers (e.g. 0,2,4), renumbered 0...")
_OUT = flags.DEFINE_string("out", None, "Output .gguf file.", required=True)
_QTYPE = flags.DEFINE_enum("qtype", "F32", ["F32", "F16", "BF16", "Q8_0"], "2-D tensor type.")
_TEMPLATE = flags.DEFINE_string("template", None, "GGUF source whose tokenizer metadata is "
                                "copied (default: the student's own source, when it is a GGUF).")
_PROMPT = flags.DEFINE_string("prompt", "The central bank raised interest rates, and shares fell.",
                              "Text whose logits the round-trip check compares.")
_SUMMARY = flags.DEFINE_string("summary", "", "Also write the summary JSON here.")


def main(argv):
  del argv
  from research.export import decoder_gguf  # pylint: disable=g-import-not-at-top
  from research.train import record  # pylint: disable=g-import-not-at-top
  params, cfg, origin = decoder_gguf.load_student(
      run_dir=_RUN_DIR.value, source=_SOURCE.value, layers=[int(i) for i in _LAYERS.value])
  template = _TEMPLATE.value or origin
  if decoder_gguf.gguf_template(template) is None:
    raise ValueError(f"no GGUF to copy the tokenizer from ({template!r}); pass --template.")
  path = decoder_gguf.export(params, cfg, _OUT.value, qtype=_QTYPE.value, template=template)
  same, ids = decoder_gguf.check_tokenizer(path, template, [_PROMPT.value])
  ids = np.asarray(ids, np.int32)
  if not ids.size:
    raise ValueError(f"--prompt {_PROMPT.value!r} tokenizes to nothing; pass some text.")
  summary = {"out": str(path), "qtype": _QTYPE.value, "template": str(template),
             "run_dir": _RUN_DIR.value, "source": _SOURCE.value,
             "layers": [int(i) for i in _LAYERS.value], "prompt_tokens": int(ids.shape[1]),
             **decoder_gguf.round_trip(params, cfg, path, ids),
             "same_tokenizer": same,
             "git_sha": record.git_sha()}
  text = json.dumps(summary, indent=1, sort_keys=True)
  print(text)
  if _SUMMARY.value:
    record.write_json(_SUMMARY.value, summary)


if __name__ == "__main__":
  cli.run(main)
