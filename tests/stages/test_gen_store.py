"""The generation loop resumable through a FolderGroupStore, NaN-guarded (2 groups x 6 steps)."""
import logging
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ouromamba_jax import progress as progress_lib
from ouromamba_jax import stop_request
from ouromamba_jax.gen import generator
from ouromamba_jax.gen import optimize
from ouromamba_jax.stages import gen_store
from tests.gen.conftest import tiny  # pylint: disable=unused-import
from tests.gen.conftest import tiny_gen_spec
from tests.crash import plant_unfinished_orbax_save


def _generate(model, params, spec, directory, **kwargs):
  store = gen_store.FolderGroupStore(directory, spec.keep_checkpoints)
  return generator.generate(model, params, spec, store=store, **kwargs)


class _Killed(Exception):
  pass


@pytest.fixture(scope='module')
def reference_run(tiny, tmp_path_factory):
  """An uninterrupted run: 4 images in 2 groups of 2, 6 steps, checkpoints every 2 steps."""
  model, params = tiny
  directory = str(tmp_path_factory.mktemp('reference'))
  return _generate(model, params, tiny_gen_spec(), directory), directory


def test_run_produces_images_labels_and_group_files(reference_run):
  result, directory = reference_run
  assert result.images.shape == (4, 32, 32, 3) and result.images.dtype == np.float32
  assert result.labels.shape == (4,) and len(set(result.labels.tolist())) == 4
  assert [h['group'] for h in result.history] == [0, 1]
  assert [h['indices'] for h in result.history] == [[0, 1], [2, 3]]
  for g in range(2):
    assert os.path.isfile(os.path.join(directory, 'groups', f'group_{g:04d}.npz'))


def test_loss_falls(reference_run):
  result, _ = reference_run
  for group in result.history:
    assert len(group['total']) == 6 and np.all(np.isfinite(group['total']))
    assert group['total'][-1] < group['total'][0]


def test_same_seed_same_images_other_seed_other_images(tiny, tmp_path, reference_run):
  model, params = tiny
  cfg = tiny_gen_spec(num_images=2, iterations=2)
  again = _generate(model, params, cfg, str(tmp_path / 'a'), seed=0)
  np.testing.assert_array_equal(
      again.images, _generate(model, params, cfg, str(tmp_path / 'b'), seed=0).images)
  other = _generate(model, params, cfg, str(tmp_path / 'c'), seed=1)
  assert not np.allclose(again.images, other.images)


def test_resume_after_interruption_matches_the_uninterrupted_run(tiny, tmp_path, reference_run,
                                                                 monkeypatch, caplog):
  model, params = tiny
  directory = str(tmp_path)
  progress = []

  class Throughput(progress_lib.Throughput):
    def __init__(self, *args):
      super().__init__(*args)
      progress.append(self)

  monkeypatch.setattr(progress_lib, 'Throughput', Throughput)

  def kill(global_step):
    if global_step == 9:  # group 2, step 3: after the step-2 checkpoint of that group
      raise _Killed()

  with pytest.raises(_Killed):
    _generate(model, params, tiny_gen_spec(), directory, on_step=kill)
  assert os.path.isfile(os.path.join(directory, 'groups', 'group_0000.npz'))
  assert not os.path.isfile(os.path.join(directory, 'groups', 'group_0001.npz'))
  steps = []
  caplog.set_level(logging.INFO)
  resumed = _generate(model, params, tiny_gen_spec(), directory, on_step=steps.append)
  assert steps == [9, 10, 11, 12]  # group 1 not redone; group 2 continues after step 2
  assert 'group 2/2 resumes at step 2' in caplog.text
  assert progress[-1].done == progress[-1].total == 4 * 6  # restored steps count as done
  lines = [r.getMessage() for r in caplog.records if 'img-it/s' in r.getMessage()]
  assert [line.split('  ')[0] for line in lines] == [f'gen group 2/2 step {t}/6' for t in (4, 6)]
  assert lines[-1].endswith('ETA 0m00s')
  expected, _ = reference_run
  np.testing.assert_array_equal(resumed.images, expected.images)
  np.testing.assert_array_equal(resumed.labels, expected.labels)
  assert resumed.history == expected.history


def test_sigterm_saves_the_step_in_progress_and_a_rerun_resumes_there(tiny, tmp_path,
                                                                       reference_run):
  """A SIGTERM during group 2's third step: Gen checkpoints the next step it finishes (step 4,
  global 10) and stops with StopRequested; the rerun redoes nothing (a kill at the same point
  resumes from step 8) and gives the uninterrupted run's images."""
  model, params = tiny
  directory = str(tmp_path)

  def terminate(global_step):
    if global_step == 9:
      os.kill(os.getpid(), signal.SIGTERM)

  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(stop_request.StopRequested, match='stopped by SIGTERM after step 4/6 of '
                     'group 2/2; its progress is saved in .*rerun the same command'):
    _generate(model, params, tiny_gen_spec(), directory, on_step=terminate)
  assert signal.getsignal(signal.SIGTERM) is before   # the previous action is back
  steps = []
  resumed = _generate(model, params, tiny_gen_spec(), directory, on_step=steps.append)
  assert steps == [11, 12]
  np.testing.assert_array_equal(resumed.images, reference_run[0].images)
  assert resumed.history == reference_run[0].history


def test_a_kill_during_a_checkpoint_save_leaves_the_previous_one_usable(tiny, tmp_path,
                                                                        reference_run):
  model, params = tiny
  directory = str(tmp_path)

  def kill(global_step):
    if global_step == 9:
      raise _Killed()

  with pytest.raises(_Killed):
    _generate(model, params, tiny_gen_spec(), directory, on_step=kill)
  # Killed while saving step 10 (group 2, step 4): its files are half there, not renamed.
  plant_unfinished_orbax_save(os.path.join(directory, 'checkpoints'), 10)
  steps = []
  resumed = _generate(model, params, tiny_gen_spec(), directory, on_step=steps.append)
  assert steps == [9, 10, 11, 12]          # resumed from step 8, the last finished save
  np.testing.assert_array_equal(resumed.images, reference_run[0].images)


def test_a_kill_while_writing_a_finished_group_redoes_it_from_its_checkpoint(
    tiny, tmp_path, reference_run, monkeypatch):
  model, params = tiny
  directory = str(tmp_path)

  def die_half_written(file, **arrays):
    file.write(b'PK\x03\x04 half a zip')
    raise _Killed()

  with monkeypatch.context() as m:
    m.setattr(np, 'savez', die_half_written)
    with pytest.raises(_Killed):
      _generate(model, params, tiny_gen_spec(), directory)
  assert os.listdir(os.path.join(directory, 'groups')) == []   # no half file, no temporary
  steps = []
  resumed = _generate(model, params, tiny_gen_spec(), directory, on_step=steps.append)
  assert steps == [5, 6, 7, 8, 9, 10, 11, 12]   # group 1 from its step-4 checkpoint
  np.testing.assert_array_equal(resumed.images, reference_run[0].images)


def test_a_damaged_finished_group_is_set_aside_named_and_generated_again(
    tiny, tmp_path, reference_run, caplog):
  model, params = tiny
  directory = str(tmp_path / 'run')
  shutil.copytree(reference_run[1], directory)
  group = os.path.join(directory, 'groups', 'group_0000.npz')
  with np.load(group) as data:
    arrays = {k: data[k] for k in data.files}
  arrays['images'] = arrays['images'] * 0          # a readable zip holding other pixels
  np.savez(group, **arrays)
  steps = []
  caplog.set_level(logging.WARNING)
  resumed = _generate(model, params, tiny_gen_spec(), directory, on_step=steps.append)
  assert steps == [1, 2, 3, 4, 5, 6]           # group 1 again, from noise; group 2 kept
  assert 'group_0000.npz: array images fails its checksum' in caplog.text
  assert 'generating that group again' in caplog.text
  assert os.path.isfile(group + '.damaged')
  np.testing.assert_array_equal(resumed.images, reference_run[0].images)


def test_resuming_with_other_settings_or_weights_is_refused(tiny, reference_run):
  model, params = tiny
  _, directory = reference_run
  with pytest.raises(ValueError, match='gen.lr'):
    _generate(model, params, tiny_gen_spec(lr=0.3), directory)
  other_weights = jax.tree.map(lambda x: x * 1.01, params)
  with pytest.raises(ValueError, match=r'differs in: params\)'):
    _generate(model, other_weights, tiny_gen_spec(), directory)


def _nan_from_step(first_bad: int) -> optax.GradientTransformation:
  """Adam whose updates turn to NaN at step `first_bad` (0-based)."""
  def init(params):
    return (jnp.zeros([], jnp.int32), optax.adam(0.1).init(params))

  def update(updates, state, params=None):
    count, adam_state = state
    updates, adam_state = optax.adam(0.1).update(updates, adam_state, params)
    updates = jnp.where(count >= first_bad, jnp.nan, updates)
    return updates, (count + 1, adam_state)

  return optax.GradientTransformation(init, update)


def test_nan_guard_names_the_step_and_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
  model, params = tiny
  monkeypatch.setattr(optimize, 'build_optimizer', lambda spec: _nan_from_step(2))
  cfg = tiny_gen_spec(num_images=2)
  with pytest.raises(generator.NonFiniteGenerationError) as error:
    _generate(model, params, cfg, str(tmp_path))
  message = str(error.value)
  assert 'non-finite pixels' in message and 'group 1/1, step 3/6' in message
  assert f'last good checkpoint: step 2 in {tmp_path}' in message
  assert 'a rerun with the same settings resumes from that checkpoint' in message
  assert not os.path.exists(os.path.join(tmp_path, 'groups', 'group_0000.npz'))


def test_nan_loss_stops_at_the_first_step(tiny, tmp_path):
  """A NaN in the forward (here: in the head) stops the run before any checkpoint is taken."""
  model, params = tiny
  bad = jax.tree_util.tree_map_with_path(
      lambda path, x: x * jnp.nan if 'head' in jax.tree_util.keystr(path) else x, params)
  with pytest.raises(generator.NonFiniteGenerationError) as error:
    _generate(model, bad, tiny_gen_spec(num_images=2, iterations=2), str(tmp_path))
  message = str(error.value)
  assert 'non-finite loss at group 1/1, step 1/2' in message
  assert 'the model weights or the input are broken' in message and 'gen.lr' not in message
  assert not os.listdir(os.path.join(tmp_path, 'checkpoints'))


@pytest.mark.parametrize('change,message', [
    (dict(num_images=5), 'pick images_per_step dividing num_images'),
    (dict(images_per_step=0), r'gen.images_per_step \(0\) must be >= 1'),
    (dict(checkpoint_every=-1), 'checkpoint_every must be >= 0'),
    (dict(mean=(0.5,), std=(0.5,)), 'one value per input channel \\(3\\)'),
    (dict(std=(0.2, 0.0, 0.2)), 'std > 0'),
])
def test_bad_settings_are_clear_errors(tiny, tmp_path, change, message):
  model, params = tiny
  with pytest.raises(ValueError, match=message):
    _generate(model, params, tiny_gen_spec(**change), str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, 'run.json'))  # refused before anything
