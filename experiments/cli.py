"""What every entry point shares: quiet library logs, and a user error as one line on stderr.

  from experiments import cli
  if __name__ == "__main__":
    cli.run(main)          # instead of absl's app.run(main)

A bad flag, config, data file or missing teacher ends in `error: <what and the fix>` and exit
status 2; `--debug` shows the traceback instead. SIGINT/SIGTERM during training save a checkpoint
and exit 130 with one line. Library INFO logs (Orbax, absl) are off unless `--verbosity` is given.
"""

from __future__ import annotations

import re
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging

from research.train.loop import RunInterrupted

_DEBUG = flags.DEFINE_bool("debug", False, "On an error, show the full traceback.")

# What a user can cause and fix: bad values, missing files, a busy workdir, a diverged run.
USER_ERRORS = (ValueError, KeyError, OSError, RuntimeError, FloatingPointError)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def one_line(e: BaseException) -> str:
  """An exception's message on one line (KeyError/AttributeError quoting undone)."""
  msg = str(e.args[0]) if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
  msg = " ".join(msg.replace("\\n", " ").replace("\\'", "'").split())
  if len(msg) > 1 and msg[0] == msg[-1] == "'":
    msg = msg[1:-1]
  return msg or type(e).__name__


def _debug_requested(argv: list[str]) -> bool:
  return any(a in ("--debug", "--debug=true", "--debug=True", "--debug=1") for a in argv)


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def _parse(argv: list[str]) -> list[str]:
  """absl flag parsing; an unknown or bad --config.* override becomes one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f"{one_line(e)} (see --helpshort)")
  except Exception as e:  # pylint: disable=broad-except  # config_flags raises many kinds
    if _debug_requested(argv):
      raise
    msg = one_line(e)
    name = re.match(r"\W*([A-Za-z_][A-Za-z0-9_]*)", msg)
    culprit = next((a for a in argv[1:] if name and a.startswith("--config")
                    and re.search(rf"[.]{re.escape(name.group(1))}\b", a.split("=")[0])), None)
    where = f"{culprit.split('=')[0]}: no such config field " if culprit else ""
    _fail(f"{where}{msg}")
  return []  # not reached


def config_overrides(name: str = "config", flag_values: flags.FlagValues = flags.FLAGS) -> set[str]:
  """The fields the command line set on config flag `name` ("data.name", "workdir", ...)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  return set(config_flags.get_override_values(flag_values[name]))


def quiet_logs() -> None:
  """Library INFO lines (Orbax "Finished saving...", absl) off unless --verbosity was given."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()
  except ImportError:
    pass


def run(main: Callable[[list[str]], object]) -> None:
  """`app.run(main)` with quiet logs and one-line user errors."""

  def wrapped(argv):
    quiet_logs()
    try:
      return main(argv)
    except RunInterrupted as e:  # a checkpoint was saved; the message says how to resume
      print(one_line(e), file=sys.stderr, flush=True)
      sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr, flush=True)
      sys.exit(EXIT_INTERRUPTED)
    except Exception as e:  # pylint: disable=broad-except
      if _DEBUG.value or not isinstance(e, USER_ERRORS):
        raise
      _fail(f"{one_line(e)} (--debug shows the traceback)")

  app.run(wrapped, flags_parser=_parse)
