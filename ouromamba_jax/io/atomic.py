"""Atomic file writes: write beside the target, then rename over it in one step.

Long jobs (training, Gen, calibration) can be killed at any moment; a reader must then find
either the old file or the new one under the final name, never a half-written one.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np


# What a writer killed mid-write leaves: atomic_path's mkstemp file (`.<name>.<8 chars>.tmp`)
# and Orbax's unfinished step folder (`<step>.orbax-checkpoint-tmp-<n>`). Neither is ever read.
_STALE_FILE = re.compile(r'^\..+\.[a-z0-9_]{8}\.tmp$')
_STALE_DIR = re.compile(r'^\d+\.orbax-checkpoint-tmp-\d+$')


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
  """Removes, under `folder`, the temporaries of writers killed mid-write; returns their paths.

  Only names no finished output can have are touched. Call it before a run writes anything
  (no writer of this run is live then): a live writer's temporary would be removed too.
  """
  removed = []
  for root, dirs, files in os.walk(os.fspath(folder)):
    for name in files:
      if _STALE_FILE.match(name):
        os.remove(os.path.join(root, name))
        removed.append(os.path.join(root, name))
    for name in [d for d in dirs if _STALE_DIR.match(d)]:
      shutil.rmtree(os.path.join(root, name))
      removed.append(os.path.join(root, name))
      dirs.remove(name)
  return sorted(removed)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path beside `path`; on success it replaces `path` in one rename."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
  os.close(fd)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  with atomic_path(path) as tmp, open(tmp, 'wb') as f:
    f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
  write_bytes(path, text.encode('utf-8'))


def write_json(path: str | os.PathLike, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=1))


def read_json(path: str | os.PathLike) -> Any:
  """The JSON object at `path`, or None when there is no file (a stage not run yet)."""
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_png(path: str | os.PathLike, image) -> None:
  """A PIL image as a PNG file."""
  with atomic_path(path) as tmp, open(tmp, 'wb') as f:
    image.save(f, format='PNG')


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
  # np.savez on a file object keeps the exact name (no '.npz' appended to the tmp name).
  with atomic_path(path) as tmp, open(tmp, 'wb') as f:
    np.savez(f, **arrays)
