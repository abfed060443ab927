"""An npz that carries its own per-array checksums (`manifest`), written atomically.

A finished Gen group is never recomputed, so a damaged group file must be found on the next run
and named. The zip's per-member CRC-32 already catches a flipped byte (np.load: `BadZipFile:
Bad CRC-32`, turned here into a one-line error naming the file); the manifest adds what the zip
cannot see: a member rewritten whole (another run's array, a tool that re-zipped the file) or a
missing, extra, reshaped one, each named.
"""
from __future__ import annotations

import json
import zipfile
import zlib
from typing import Mapping

import numpy as np

from ouromamba_jax.io import atomic
from ouromamba_jax.io import integrity
from ouromamba_jax.io import manifest

MANIFEST_KEY = '__manifest__'
# What np.load raises on a truncated or overwritten npz.
READ_ERRORS = (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError, zlib.error)


def write(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """`arrays` and their manifest in one npz, replaced in one rename."""
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  if MANIFEST_KEY in arrays:
    raise ValueError(f'{MANIFEST_KEY!r} is reserved for the manifest of {path}.')
  atomic.write_npz(path, **arrays,
                   **{MANIFEST_KEY: np.asarray(json.dumps(manifest.manifest(arrays.items())))})


def read(path: str, what: str, remedy: str) -> dict[str, np.ndarray]:
  """The arrays of `path`, checked against its manifest (files without one load unchecked).
  Raises integrity.DamagedFileError naming the file (and the array) when it is damaged."""
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: np.asarray(data[k]) for k in data.files}
    expected = arrays.pop(MANIFEST_KEY, None)
    expected = None if expected is None else json.loads(str(expected))
  except READ_ERRORS as e:   # json's decode error is a ValueError
    raise integrity.damaged(path, what, e, remedy) from e
  if expected is not None:
    manifest.verify(arrays, expected, path, remedy)
  return arrays
