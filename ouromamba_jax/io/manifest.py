"""Per-array checksums, so a loader can tell a damaged array from a good one and name it.

Neither safetensors nor Orbax's array store checksums its payload: a flipped byte loads as a
plausible weight. A manifest {name: {crc32, shape, dtype}} written beside the arrays and checked
on load turns that into a one-line error naming the file and the array.
"""
from __future__ import annotations

import zlib
from typing import Any, Iterable, Mapping

import numpy as np

from ouromamba_jax.io import integrity


def crc32(array) -> str:
  """CRC-32 of the array's raw bytes (C order), as 8 hex digits."""
  data = np.ascontiguousarray(np.asarray(array)).reshape(-1).view(np.uint8)
  return f'{zlib.crc32(data):08x}'


def entry(array) -> dict[str, Any]:
  array = np.asarray(array)
  return {'crc32': crc32(array), 'shape': list(array.shape), 'dtype': str(array.dtype)}


def manifest(named: Iterable[tuple[str, Any]]) -> dict[str, dict[str, Any]]:
  """{name: {'crc32', 'shape', 'dtype'}} of every array."""
  return {name: entry(array) for name, array in named}


def problem(name: str, array, want: Mapping[str, Any]) -> str:
  """What is wrong with one array against its manifest entry ('' when nothing)."""
  array = np.asarray(array)
  if list(array.shape) != list(want['shape']) or str(array.dtype) != want['dtype']:
    return (f'array {name} is {array.dtype}{list(array.shape)}, the manifest says '
            f'{want["dtype"]}{list(want["shape"])}')
  if crc32(array) != want['crc32']:
    return f'array {name} fails its checksum (crc32 {crc32(array)}, manifest {want["crc32"]})'
  return ''


def verify(arrays: Mapping[str, Any], expected: Mapping[str, Mapping[str, Any]], source: str,
           remedy: str) -> None:
  """Raises integrity.DamagedFileError naming `source` and the first array that is missing,
  unexpected, reshaped or fails its checksum."""
  missing = sorted(set(expected) - set(arrays))
  extra = sorted(set(arrays) - set(expected))
  found = (f'array {missing[0]} is missing' if missing else
           f'array {extra[0]} is not in the manifest' if extra else '')
  for name in sorted(expected):
    if found:
      break
    found = problem(name, arrays[name], expected[name])
  if found:
    raise integrity.DamagedFileError(f'{source}: {found}; the file is damaged: {remedy}')
