"""step_manifests: every finished Orbax step has a manifest; restore takes the newest intact."""
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from ouromamba_jax.io import integrity
from ouromamba_jax.io import step_manifests
from tests.crash import plant_unfinished_orbax_save


def _tree(step):
  return {'w': np.full((3, 4), step, np.float32), 'opt': {'count': np.array(step, np.int32)}}


def _saved(directory, steps, keep=3):
  """A manager with `steps` saved the way mode train saves (manifest first)."""
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True))
  manifests = step_manifests.StepManifests(directory)
  for step in steps:
    manifests.record(step, _tree(step))
    manager.save(step, args=ocp.args.StandardSave(_tree(step)))
    manifests.prune(set(manager.all_steps()) | {step})
  manager.wait_until_finished()
  return manager, manifests


def _restore(manager):
  return lambda step: manager.restore(step, args=ocp.args.StandardRestore(_tree(0)))


def test_steps_get_manifests_and_pruned_steps_lose_them(tmp_path):
  directory = str(tmp_path / 'ckpt')
  manager, manifests = _saved(directory, [1, 2, 3], keep=2)
  assert sorted(manager.all_steps()) == [2, 3]
  assert sorted(os.listdir(directory + '.manifests')) == ['2.json', '3.json']
  logs = []
  step, state = step_manifests.restore_intact(manager, manifests, _restore(manager), logs.append)
  assert step == 3 and logs == []
  np.testing.assert_array_equal(state['w'], _tree(3)['w'])


def test_a_step_that_fails_its_manifest_is_named_and_skipped(tmp_path):
  directory = str(tmp_path / 'ckpt')
  manager, manifests = _saved(directory, [1, 2])
  restore = _restore(manager)
  silently_wrong = lambda step: ({**restore(step), 'w': restore(step)['w'] + 1e-3}
                                 if step == 2 else restore(step))
  logs = []
  step, _ = step_manifests.restore_intact(manager, manifests, silently_wrong, logs.append)
  assert step == 1
  assert len(logs) == 1 and logs[0].startswith('checkpoint step 2 is damaged and skipped (DamagedFileError: ')
  assert "array ['w'] fails its checksum" in logs[0]


def test_a_truncated_step_is_skipped_and_all_damaged_is_one_error(tmp_path):
  directory = str(tmp_path / 'ckpt')
  manager, manifests = _saved(directory, [1, 2])
  for step in (2, 1):
    files = [os.path.join(r, f) for r, _, names in os.walk(os.path.join(directory, str(step)))
             for f in names]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, 'r+b') as f:
      f.truncate(os.path.getsize(biggest) // 2)
    manager = ocp.CheckpointManager(directory)
    logs = []
    if step == 2:
      assert step_manifests.restore_intact(manager, manifests, _restore(manager),
                                           logs.append)[0] == 1
      assert logs[0].startswith('checkpoint step 2 is damaged')
  with pytest.raises(integrity.DamagedFileError,
                     match=r'ckpt: all 2 checkpoint step\(s\) are damaged .*delete that folder'):
    step_manifests.restore_intact(manager, manifests, _restore(manager), logs.append)


def test_a_kill_during_a_save_leaves_the_previous_step_restorable(tmp_path):
  directory = str(tmp_path / 'ckpt')
  manager, manifests = _saved(directory, [1])
  manifests.record(2, _tree(2))                  # the manifest comes first; then the kill
  plant_unfinished_orbax_save(directory, 2)
  manager = ocp.CheckpointManager(directory)
  step, state = step_manifests.restore_intact(manager, manifests, _restore(manager), print)
  assert step == 1 and int(state['opt']['count']) == 1


def test_no_step_is_none(tmp_path):
  directory = str(tmp_path / 'ckpt')
  manager, manifests = _saved(directory, [])
  assert step_manifests.restore_intact(manager, manifests, _restore(manager), print) is None
