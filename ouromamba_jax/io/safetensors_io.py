"""`.safetensors` files as flat {name: numpy array} dicts (bf16 via ml_dtypes), written atomically.

safetensors stores raw little-endian bytes plus a JSON header, so unlike a pickle it can be read
from an untrusted source safely. Writes go to a temporary file in the target folder and are
renamed into place, so a crash never leaves a half-written checkpoint under the final name.
The format has no checksum, so files written here carry a CRC-32 per tensor in the header's
metadata (`CRC_KEY`, a JSON manifest), verified on read; files from elsewhere load unchecked.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Optional

import numpy as np
from safetensors import numpy as safetensors_numpy
from safetensors import safe_open
from safetensors import SafetensorError

from ouromamba_jax.io import integrity
from ouromamba_jax.io import manifest
from ouromamba_jax.io.atomic import atomic_path

_REMEDY = 'download or export it again.'
CRC_KEY = 'ouromamba_jax.crc32'


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'safetensors file {path} does not exist')
  try:
    with safe_open(path, framework='numpy') as f:
      metadata = f.metadata() or {}
      tensors = {name: f.get_tensor(name) for name in f.keys()}
  except SafetensorError as e:
    raise integrity.damaged(path, '.safetensors file', e, _REMEDY) from e
  if CRC_KEY in metadata:
    manifest.verify(tensors, json.loads(metadata[CRC_KEY]), path, _REMEDY)
  return tensors


def write_safetensors(tensors: Mapping[str, np.ndarray], path: str | os.PathLike,
                      metadata: Optional[Mapping[str, str]] = None) -> None:
  """Writes contiguous copies of `tensors` (any numpy/ml_dtypes dtype) to `path` atomically,
  with their CRC-32s; a tensor holding NaN/Inf is refused before anything is written."""
  arrays = {}
  for name, value in tensors.items():
    array = np.asarray(value)
    if array.dtype == object:
      raise TypeError(f'safetensors: tensor {name!r} is not a numeric array ({type(value)})')
    arrays[name] = np.ascontiguousarray(array)
  integrity.check_finite(arrays.items(), os.fspath(path),
                         'refusing to save it: the params are broken (a diverged run?).')
  metadata = {**(metadata or {}), CRC_KEY: json.dumps(manifest.manifest(arrays.items()))}
  with atomic_path(path) as tmp:
    safetensors_numpy.save_file(arrays, tmp, metadata=metadata)
