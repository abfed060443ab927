"""Flax MambaVision against the official PyTorch model (fixture logits) and its window/block
layout."""
import json

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax.io import mambavision_keys
from ouromamba_jax.models import layers
from ouromamba_jax.models import mambavision
from ouromamba_jax.models import registry
from tests.fixtures.torch_fixtures import FIXTURES
from tests.fixtures.torch_fixtures import relative_error
from tests import random_init

FP32_TOLERANCE = 1e-5
FIXTURE_NAMES = ('mambavision_tiny_recipe', 'mambavision_base_recipe')


def load_fixture(name, **overrides):
  data = np.load(FIXTURES / f'{name}.npz')
  model = mambavision.MambaVision(**{**json.loads(str(data['config_json'])), **overrides})
  params = mambavision_keys.params_from_file(FIXTURES / f'{name}.pth.tar', model)
  return model, params, data['images'], data['logits']


@pytest.mark.parametrize('name,implementation', [(name, 'sequential') for name in FIXTURE_NAMES]
                         + [('mambavision_tiny_recipe', 'associative')])
def test_logits_match_official_pytorch(name, implementation):
  model, params, images, logits = load_fixture(name, scan_implementation=implementation)
  out = jax.jit(model.apply)({'params': params}, images)
  assert out.dtype == jnp.float32 and out.shape == logits.shape
  assert relative_error(out, logits) <= FP32_TOLERANCE


def test_windows_round_trip_row_major():
  grid = jnp.arange(4 * 6, dtype=jnp.float32).reshape(1, 4, 6, 1)
  windows = mambavision.window_partition(grid, 2)
  assert windows.shape == (6, 4, 1)
  np.testing.assert_array_equal(windows[1, :, 0], [2, 3, 8, 9])   # row 0, column 1 window
  np.testing.assert_array_equal(mambavision.window_reverse(windows, 2, 4, 6), grid)


@pytest.mark.parametrize('depth,attention', [(8, [4, 5, 6, 7]), (4, [2, 3]), (10, [5, 6, 7, 8, 9]),
                                             (5, [3, 4]), (3, [2]), (1, [])])
def test_attention_blocks_are_the_official_second_half(depth, attention):
  assert list(mambavision.attention_blocks(depth)) == attention


def _param_count(name, buffers=True):
  shapes = mambavision_keys.model_param_shapes(registry.build_model(name))
  return sum(int(np.prod(s.shape)) for path, s in traverse_util.flatten_dict(shapes).items()
             if buffers or not path[-1].startswith('running_'))


@pytest.mark.parametrize('name,params_m', [('mambavision_t', 31.8), ('mambavision_b', 97.7)])
def test_released_variants_param_counts(name, params_m):
  """The official README's #params: MambaVision-T 31.8M, MambaVision-B 97.7M (BN running
  statistics are buffers there, so they are left out here)."""
  count = _param_count(name, buffers=False) / 1e6
  assert abs(count - params_m) < 0.1, count


def test_cifar_testbed_fits_16mb_bf16():
  assert 2 * _param_count('mambavision_t_cifar10') <= 16 * 2 ** 20


def test_batch_statistics_mode_normalizes_by_the_batch():
  bn = mambavision.BatchNorm(use_batch_stats=True)
  x = 3.0 + 2.0 * jnp.asarray(random_init.normal(0, (8, 4, 4, 5)))
  params = bn.init(jax.random.key(1), x)['params']
  y, stats = bn.apply({'params': params}, x, mutable=['batch_stats'])
  np.testing.assert_allclose(jnp.mean(y, (0, 1, 2)), 0.0, atol=1e-5)
  n = 8 * 4 * 4
  np.testing.assert_allclose(stats['batch_stats']['running_var'],
                             jnp.var(x, (0, 1, 2)) * n / (n - 1), rtol=1e-5)


def test_running_statistics_follow_the_batch_by_momentum():
  params = {'norm': {'weight': jnp.ones(2), 'running_mean': jnp.zeros(2),
                     'running_var': jnp.ones(2)}}
  stats = {'norm': {'running_mean': jnp.array([1.0, 2.0]), 'running_var': jnp.array([3.0, 5.0])}}
  merged = layers.merge_batch_stats(params, stats, 0.1)
  np.testing.assert_allclose(merged['norm']['running_mean'], [0.1, 0.2])
  np.testing.assert_allclose(merged['norm']['running_var'], [1.2, 1.4])
  np.testing.assert_array_equal(merged['norm']['weight'], 1.0)
