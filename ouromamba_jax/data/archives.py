"""Extracting read-only dataset archives into a cache folder (never in place)."""
from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile


def default_cache_dir() -> str:
  return os.environ.get('OUROMAMBA_CACHE', os.path.expanduser('~/.cache/ouromamba_jax'))


def extract_once(archive: str, cache_dir: str) -> str:
  """Extracts `archive` under cache_dir/<name>-<hash>/ once; returns that folder.

  Extraction goes to a temporary sibling that is renamed at the end, so an interrupted run
  never leaves a half-extracted folder that looks complete.
  """
  archive = os.path.abspath(archive)
  stat = os.stat(archive)
  key = hashlib.sha1(f'{archive}:{stat.st_size}:{int(stat.st_mtime)}'.encode()).hexdigest()[:10]
  name = os.path.basename(archive).split('.')[0]
  target = os.path.join(cache_dir, f'{name}-{key}')
  if os.path.isdir(target):
    return target
  os.makedirs(cache_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{name}-', dir=cache_dir)
  with tarfile.open(archive) as tar:
    tar.extractall(tmp, filter='data')
  try:
    os.replace(tmp, target)
  except OSError:  # another process finished first
    if not os.path.isdir(target):
      raise
  return target
