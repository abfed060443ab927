"""Damaged or non-finite inputs, refused in one line that names the file and what to do.

A NaN weight does not crash anything: it silently turns every logit into NaN (or a calibration
into garbage scales). Loaders therefore check every float tensor once, on load, and name the
first bad one; a file that cannot be parsed is reported as damaged instead of with the parser's
own message (`incomplete metadata`, `BadZipFile`, ...), which names neither file nor remedy.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np


class UnusableFileError(ValueError):
  """A file the user gave cannot be used (damaged, unsafe to unpickle, made for another model):
  the command line reports its message alone, with no traceback."""


class DamagedFileError(UnusableFileError):
  """A file exists but cannot be parsed (truncated download, disk error, wrong file)."""


class NonFiniteError(ValueError):
  """A tensor holds NaN or Inf."""


def damaged(path: str, what: str, error: BaseException, remedy: str) -> DamagedFileError:
  """The one-line error for a file that cannot be read as `what`."""
  reason = ' '.join(str(error).split()) or type(error).__name__
  return DamagedFileError(f'{path} is not a readable {what} ({type(error).__name__}: {reason}); '
                          f'it is truncated or corrupt: {remedy}')


def count_nonfinite(array) -> int:
  """NaN/Inf entries of a float array (0 for integer codes, which cannot hold them)."""
  array = np.asarray(array)
  if array.dtype.kind == 'V':   # bfloat16 & co. (ml_dtypes): widen exactly, then test
    array = array.astype(np.float32)
  if not np.issubdtype(array.dtype, np.floating):
    return 0
  return int(array.size - np.count_nonzero(np.isfinite(array)))


def first_nonfinite(named: Iterable[tuple[str, object]]) -> Optional[tuple[str, int, int]]:
  """(name, bad count, size) of the first tensor holding NaN or Inf, or None."""
  for name, array in named:
    bad = count_nonfinite(array)
    if bad:
      return name, bad, int(np.size(array))
  return None


def check_finite(named: Iterable[tuple[str, object]], source: str, remedy: str) -> None:
  """Raises NonFiniteError naming `source` and the first tensor holding NaN or Inf."""
  found = first_nonfinite(named)
  if found:
    name, bad, size = found
    raise NonFiniteError(f'{source}: tensor {name} holds {bad} NaN/Inf value(s) of {size}; '
                         f'{remedy}')
