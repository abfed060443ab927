"""Per-array checksums of Orbax checkpoint steps, and a restore that skips a damaged step.

Orbax renames a step into place only when it is complete (a kill mid-save leaves a tmp folder
it ignores), but it does not checksum the stored arrays: a step damaged afterwards (disk error,
a truncated copy) restores as plausible numbers or fails deep in TensorStore. Each step's
manifest is written, atomically, before the step itself, into `<checkpoint dir>.manifests/`
(beside the manager's folder, which Orbax owns), so every finished step has one; on restore the
newest step that reads and matches its manifest wins, and each one skipped is named in the log.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

import jax
import numpy as np

from ouromamba_jax.io import atomic
from ouromamba_jax.io import integrity
from ouromamba_jax.io import manifest


def named_leaves(tree) -> list[tuple[str, np.ndarray]]:
  """(key path, host array) of every leaf: the names a manifest checks."""
  return [(jax.tree_util.keystr(path), np.asarray(jax.device_get(leaf)))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


class StepManifests:
  """The manifests of one CheckpointManager's steps, kept in `<directory>.manifests/`."""

  def __init__(self, directory: str):
    self.folder = os.path.abspath(directory).rstrip(os.sep) + '.manifests'

  def path(self, step: int) -> str:
    return os.path.join(self.folder, f'{int(step)}.json')

  def record(self, step: int, tree) -> None:
    """Writes step's manifest (call before saving the step; `prune` drops those of steps
    gone)."""
    atomic.write_json(self.path(step), manifest.manifest(named_leaves(tree)))

  def prune(self, steps) -> None:
    """Removes the manifests of steps not in `steps` (the manager deleted them)."""
    keep = {f'{int(s)}.json' for s in steps}
    if os.path.isdir(self.folder):
      for name in os.listdir(self.folder):
        if name.endswith('.json') and name not in keep:
          os.remove(os.path.join(self.folder, name))

  def verify(self, step: int, tree, source: str, remedy: str) -> None:
    """Raises integrity.DamagedFileError when `tree` (restored step) fails its manifest; a step
    without one (written before manifests existed) passes unchecked."""
    expected = atomic.read_json(self.path(step))
    if expected is not None:
      manifest.verify(dict(named_leaves(tree)), expected, source, remedy)


def restore_intact(manager, manifests: StepManifests, restore: Callable[[int], Any],
                   log: Callable[[str], Any]) -> Optional[tuple[int, Any]]:
  """(step, state) of the newest step of `manager` that restores and matches its manifest, or
  None when there is no step. Damaged steps are logged and skipped; when every step is damaged
  the error names the folder and what to do."""
  steps = sorted(manager.all_steps(), reverse=True)
  source = lambda step: os.path.join(str(manager.directory), str(step))
  remedy = 'trying the previous checkpoint.'
  for step in steps:
    try:
      state = restore(step)
      manifests.verify(step, state, source(step), remedy)
      return step, state
    except Exception as e:  # pylint: disable=broad-except  (TensorStore, Orbax, manifest)
      log(f'checkpoint step {step} is damaged and skipped ({type(e).__name__}: '
          f'{" ".join(str(e).split())})')
  if steps:
    raise integrity.DamagedFileError(
        f'{manager.directory}: all {len(steps)} checkpoint step(s) are damaged (see the log); '
        'delete that folder (and its .manifests) to start over.')
  return None
