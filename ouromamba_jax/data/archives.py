"""Extracting read-only dataset archives into a cache folder (never in place)."""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib

from ouromamba_jax.io import integrity


def default_cache_dir() -> str:
  return os.environ.get('OUROMAMBA_CACHE', os.path.expanduser('~/.cache/ouromamba_jax'))


def extract_once(archive: str, cache_dir: str) -> str:
  """Extracts `archive` under cache_dir/<name>-<hash>/ once; returns that folder.

  Extraction goes to a temporary sibling that is renamed at the end, so an interrupted run
  never leaves a half-extracted folder that looks complete. A truncated or junk archive is
  refused (integrity.DamagedFileError naming it) and leaves nothing in the cache.
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
  try:
    with tarfile.open(archive) as tar:
      tar.extractall(tmp, filter='data')
  except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
    shutil.rmtree(tmp, ignore_errors=True)
    raise integrity.damaged(archive, 'tar archive', e,
                            'replace it with a complete copy (download it again).') from e
  try:
    os.replace(tmp, target)
  except OSError:  # another process finished first
    if not os.path.isdir(target):
      raise
  return target
