"""The `generate` stage's resumable state: a `generator.GroupStore` in a folder.

  run.json               what defines the run (seed, model, weights digest, gen settings);
                         resuming with different ones is refused
  groups/group_NNNN.npz  finished groups (images, labels, indices, loss history) with a
                         manifest of per-array checksums (`io.checked_npz`); never redone,
                         unless damaged: then it is set aside as *.damaged and regenerated
  checkpoints/           Orbax CheckpointManager of the group in progress (images, Adam state,
                         loss history); Orbax step = group * iterations + steps done in it
Killed at any point, a rerun loads the finished groups and continues the current group from
its last checkpoint.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from absl import logging
import orbax.checkpoint as ocp

from ouromamba_jax import distributed
from ouromamba_jax.io import atomic
from ouromamba_jax.io import checked_npz
from ouromamba_jax.io import integrity

RUN_FILE = 'run.json'


class FolderGroupStore:
  """Finished groups as atomic npz files, the group in progress as Orbax checkpoints."""

  def __init__(self, directory: str, keep_checkpoints: int = 2):
    self.directory = os.path.abspath(directory)
    self.keep = max(int(keep_checkpoints), 1)
    self.manager = None

  def _group_path(self, group: int) -> str:
    return os.path.join(self.directory, 'groups', f'group_{group:04d}.npz')

  def begin(self, description: dict) -> None:
    os.makedirs(self.directory, exist_ok=True)
    check_run_description(self.directory, description)
    self.manager = ocp.CheckpointManager(
        os.path.join(self.directory, 'checkpoints'),
        options=ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True))

  def finished_group(self, group: int) -> Optional[dict]:
    """The group's arrays; None when it is not finished, or when its file is damaged (then
    it is renamed to *.damaged, kept for inspection, and the group is generated again: Gen
    is seeded per image, so the redo gives the images the run would have had)."""
    path = self._group_path(group)
    if not os.path.isfile(path):
      return None
    try:
      return checked_npz.read(path, 'Gen group file', 'generating that group again.')
    except integrity.DamagedFileError as e:
      logging.warning('gen: %s', e)
      if distributed.is_writer():
        os.replace(path, path + '.damaged')
      return None

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def restore(self, step: int, target: dict) -> dict:
    return self.manager.restore(step, args=ocp.args.StandardRestore(target))

  def save(self, step: int, host: dict) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(host))

  def save_group(self, group: int, data: dict) -> None:
    if distributed.is_writer():   # every process holds the same gathered group
      checked_npz.write(self._group_path(group), data)

  def location(self) -> str:
    return str(self.manager.directory)

  def close(self) -> None:
    if self.manager is not None:
      self.manager.wait_until_finished()
      self.manager.close()
      self.manager = None


def _images_per_step_used(desc: dict) -> dict:
  """Older run.json files recorded gen.images_per_step as set, not as used (<= num_images)."""
  gen = desc.get('gen', {})
  if 'images_per_step' in gen and 'num_images' in gen:
    gen = {**gen, 'images_per_step': min(gen['images_per_step'], gen['num_images'])}
  return {**desc, 'gen': gen}


def check_run_description(directory: str, desc: dict) -> None:
  """Writes run.json on a fresh directory; refuses to resume a run made with other settings."""
  path = os.path.join(directory, RUN_FILE)
  if os.path.isfile(path):
    with open(path) as f:
      old = _images_per_step_used(json.load(f))
    if old != desc:
      diff = sorted(k for k in set(old['gen']) | set(desc['gen'])
                    if old['gen'].get(k) != desc['gen'].get(k))
      other = [k for k in ('seed', 'model', 'params') if old.get(k) != desc.get(k)]
      raise ValueError(f'{directory} holds a generation run with different settings '
                       f'(differs in: {", ".join(other + ["gen." + k for k in diff])}). '
                       'Use another workdir, or delete that folder to start over.')
    return
  if distributed.is_writer():
    atomic.write_json(path, desc)
