"""Mode `train`: a run cut into pieces (a time limit, a SIGTERM, a kill mid-save) equals the same
run in one go."""
from __future__ import annotations

import json
import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from configs import vim_t_cifar10
from ouromamba_jax import stop_request
from ouromamba_jax.data import cifar10
from ouromamba_jax.stages import train as trainer
from ouromamba_jax.train import recipe
from tests.crash import plant_unfinished_orbax_save


def tiny_config(data_dir: str, epochs: int = 2):
  c = vim_t_cifar10.get_config()
  c.model.checkpoint = ''
  c.model.overrides.update(d_model=16, depth=1, patch_size=8)  # 17 tokens
  c.model.scan_implementation = 'sequential'
  c.data.data_dir = data_dir
  c.data.use_tfds = False
  c.train.update(epochs=epochs, batch_size=8, warmup_epochs=1.0, eval_every_epochs=1,
                 log_every_steps=1, checkpoint_every_steps=1000, compute_dtype='float32')
  return c


@pytest.fixture(scope='module')
def tiny_cifar(tmp_path_factory) -> str:
  """A CIFAR-10-layout folder of random 32x32 JPEGs: 2 per class for train, 1 for test."""
  root = tmp_path_factory.mktemp('cifar')
  rng = np.random.default_rng(0)
  for split, per_class in (('train', 2), ('test', 1)):
    for name in cifar10.CLASSES:
      os.makedirs(root / split / name)
      for i in range(per_class):
        pixels = rng.integers(0, 256, (32, 32, 3), np.uint8)
        Image.fromarray(pixels).save(root / split / name / f'{i:04d}.jpg')
  return str(root)


def _restore_state(workdir: str):
  manager = ocp.CheckpointManager(os.path.join(workdir, 'train_checkpoints'))
  return manager.restore(manager.latest_step())


def test_resume_continues_bit_for_bit(tiny_cifar, tmp_path, monkeypatch):
  cfg = tiny_config(tiny_cifar)
  whole = trainer.train(cfg, str(tmp_path / 'whole'))
  assert whole['finished'] and whole['step'] == 4  # 20 images // 8 = 2 steps x 2 epochs

  pieces = str(tmp_path / 'pieces')
  cfg.train.max_seconds = 1e-9  # stops (with a checkpoint) after a single step
  result = trainer.train(cfg, pieces)
  assert result == {**result, 'step': 1, 'finished': False}
  assert int(_restore_state(pieces)['step']) == 1
  # Then a SIGTERM during step 2: that step is checkpointed and the run stops.
  cfg.train.max_seconds = 0.0
  make_train_step = recipe.make_train_step

  def terminated_after_one_step(*args, **kwargs):
    step_fn = make_train_step(*args, **kwargs)

    def step(*step_args):
      os.kill(os.getpid(), signal.SIGTERM)
      return step_fn(*step_args)
    return step

  with monkeypatch.context() as m:
    m.setattr(recipe, 'make_train_step', terminated_after_one_step)
    with pytest.raises(stop_request.StopRequested, match='stopped by SIGTERM at step 2/4'):
      trainer.train(cfg, pieces)
  assert int(_restore_state(pieces)['step']) == 2
  # Then killed while saving step 3: its half-written folder must not be taken for a checkpoint.
  plant_unfinished_orbax_save(os.path.join(pieces, 'train_checkpoints'), 3)
  assert trainer.train(cfg, pieces)['finished']

  a, b = _restore_state(str(tmp_path / 'whole')), _restore_state(pieces)
  assert int(a['step']) == int(b['step']) == 4
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):  # params and both Adam moments, bit for bit
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  steps = ocp.CheckpointManager(os.path.join(pieces, 'train_checkpoints')).all_steps()
  assert sorted(os.listdir(os.path.join(pieces, 'train_checkpoints.manifests'))) == sorted(
      f'{s}.json' for s in steps)                   # every kept step has its manifest
  with open(os.path.join(pieces, 'train_result.json')) as f:
    assert json.load(f)['finished']
  assert os.path.isfile(os.path.join(pieces, 'model.safetensors'))


def test_training_on_a_dataset_without_in_memory_splits_is_refused(tmp_path):
  cfg = tiny_config(str(tmp_path))
  cfg.data.name = 'imagenet'
  with pytest.raises(ValueError, match='mode train keeps whole splits'):
    trainer.train(cfg, str(tmp_path / 'wd'))


@pytest.mark.slow  # two training compilations of a second model family (~2 min on 2 busy cores)
def test_vmamba_trains_resumes_and_exports_official_names(tiny_cifar, tmp_path):
  """configs/vmamba_t_cifar10.py in mode train (a tiny VMamba): a stopped run resumes to the
  end and its model.safetensors loads back through the VMamba key table."""
  from configs import vmamba_t_cifar10
  from ouromamba_jax import checkpoints
  from ouromamba_jax.stages import sections
  cfg = vmamba_t_cifar10.get_config()
  cfg.model.overrides.update(dims=8, depths=(1, 1))
  cfg.model.scan_implementation = 'xla'
  cfg.data.data_dir = tiny_cifar
  cfg.data.use_tfds = False
  cfg.data.eval_images = 10
  cfg.train.update(epochs=1, batch_size=8, warmup_epochs=1.0, eval_every_epochs=1,
                   log_every_steps=1, compute_dtype='float32', max_seconds=1e-9)
  workdir = str(tmp_path / 'vmamba')
  assert trainer.train(cfg, workdir)['step'] == 1
  cfg.train.max_seconds = 0.0
  result = trainer.train(cfg, workdir)
  assert result['finished'] and result['step'] == 2
  model = sections.model_from_config(cfg.model)
  params = checkpoints.load_checkpoint(os.path.join(workdir, 'model.safetensors'), model)
  np.testing.assert_allclose(np.asarray(params['layers_1']['blocks_0']['op']['A_logs']),
                             np.asarray(_restore_state(workdir)['params']['layers_1']['blocks_0']
                                        ['op']['A_logs']), rtol=1e-2)
