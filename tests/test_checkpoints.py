"""The bundled testbed model: shipped within budget, loads strictly, and keeps its accuracy."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from ouromamba_jax import checkpoints
from ouromamba_jax import evaluation
from ouromamba_jax.data import cifar10
from ouromamba_jax.io import hustvl_keys
from ouromamba_jax.io import safetensors_io
from ouromamba_jax.models import build_model

CIFAR_DIR = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'cifar10')
# Each bundled testbed and one official key its file must hold under the family's names.
TESTBED_KEYS = {'vim_t_cifar10': 'layers.0.mixer.A_b_log',
                'vmamba_t_cifar10': 'layers.0.blocks.0.op.A_logs',
                'mambavision_t_cifar10': 'levels.2.blocks.0.mixer.A_log'}


def _card(name):
  with open(os.path.join(checkpoints.ASSETS_DIR, f'{name}.json')) as f:
    return json.load(f)


class _DataDir:
  def __init__(self, data_dir):
    self.data_dir, self.cache_dir, self.use_tfds = data_dir, '', False


def test_bundled_means_the_registered_variant_and_nothing_else():
  with pytest.raises(ValueError, match='no bundled checkpoint for model'):
    checkpoints.load_checkpoint('bundled', build_model('vim_t'))


def test_every_testbed_is_bundled_with_its_card():
  assert set(checkpoints.BUNDLED) == set(TESTBED_KEYS)
  for name in TESTBED_KEYS:
    assert _card(name)['file'] == os.path.basename(checkpoints.BUNDLED[name])
    assert os.path.isfile(os.path.join(checkpoints.ASSETS_DIR, f'{name}.md'))


@pytest.mark.parametrize('name', sorted(TESTBED_KEYS))
def test_bundled_file_is_small_bf16_under_official_names(name):
  path = checkpoints.BUNDLED[name]
  assert os.path.getsize(path) <= 16 * 2**20
  tensors = safetensors_io.read_safetensors(path)
  assert TESTBED_KEYS[name] in tensors
  assert {str(t.dtype) for t in tensors.values()} == {'bfloat16'}


def test_bundled_model_loads_as_fp32_by_name():
  model = build_model('vim_t_cifar10')
  params = checkpoints.load_checkpoint('bundled', model)
  assert model.num_classes == 10 and model.depth == 24 and model.d_model == 192
  leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]
  assert all(x.dtype == np.float32 and np.isfinite(x).all() for x in leaves)


@pytest.mark.skipif(not os.path.isfile(os.path.join(CIFAR_DIR, 'test.tar.gz')),
                    reason='needs ../shared/data/cifar10/test.tar.gz')
@pytest.mark.parametrize('name', sorted(TESTBED_KEYS))
def test_bundled_model_reaches_its_recorded_accuracy_on_200_test_images(name):
  """The card's 200-image figure (the 500-image one costs 2.5x the CPU time: Vim-T's forward
  runs ~20 images/s on 2 CPU cores: compute, not compilation)."""
  recorded = _card(name)['accuracy']['cifar10_test_200_top1']
  model = build_model(name)
  params = checkpoints.load_checkpoint('bundled', model)
  source = cifar10.eval_source(_DataDir(CIFAR_DIR), model.img_size)
  result = evaluation.evaluate_source(model, params, source, eval_images=200)
  assert result['images'] == 200
  assert abs(result['top1'] - recorded) <= 0.01, (result, recorded)


def test_a_bundled_file_with_a_nan_weight_is_refused_naming_it(tmp_path, monkeypatch):
  model = build_model('vim_t', img_size=32, patch_size=8, depth=1, d_model=16, num_classes=10)
  params = checkpoints.random_params(model)
  params['layers_0']['mixer']['A_log'] = params['layers_0']['mixer']['A_log'].at[0, 0].set(
      float('nan'))
  path = str(tmp_path / 'tiny.safetensors')
  with pytest.raises(ValueError, match=r'^.*tiny\.safetensors: tensor layers\.0\.mixer\.A_log '
                                       r'holds 1 NaN/Inf value\(s\) of \d+; refusing to save it'):
    checkpoints.save_checkpoint(params, path)      # the project never writes one ...
  safetensors_io.safetensors_numpy.save_file(      # ... but another program may
      hustvl_keys.state_dict_from_params(params), path)
  monkeypatch.setitem(checkpoints.BUNDLED, 'tiny', path)
  with pytest.raises(ValueError, match=r'^.*tiny\.safetensors: tensor layers\.0\.mixer\.A_log '
                                       r'holds 1 NaN/Inf value\(s\) of \d+; .*again\.$'):
    checkpoints.load_checkpoint('bundled', model, model_name='tiny')
