"""Flax VMamba against the official PyTorch VSSM (fixture logits) and the cross-scan semantics."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax.io import vmamba_keys
from ouromamba_jax.models import registry
from ouromamba_jax.models import vmamba
from tests.fixtures.torch_fixtures import FIXTURES
from tests.fixtures.torch_fixtures import relative_error

FP32_TOLERANCE = 1e-5
FIXTURE_NAMES = ('vmamba_tiny_recipe', 'vmamba_base_recipe')


def load_fixture(name, **overrides):
  data = np.load(FIXTURES / f'{name}.npz')
  model = vmamba.VMamba(**{**json.loads(str(data['config_json'])), **overrides})
  params = vmamba_keys.params_from_file(FIXTURES / f'{name}.pth', model)
  return model, params, data['images'], data['logits']


@pytest.mark.parametrize('name,implementation', [(name, 'sequential') for name in FIXTURE_NAMES]
                         + [('vmamba_base_recipe', 'associative')])
def test_logits_match_official_pytorch(name, implementation):
  model, params, images, logits = load_fixture(name, scan_implementation=implementation)
  out = jax.jit(model.apply)({'params': params}, images)
  assert out.dtype == jnp.float32 and out.shape == logits.shape
  assert relative_error(out, logits) <= FP32_TOLERANCE


def test_cross_scan_orders_and_merge_inverts():
  h, w = 2, 3
  grid = jnp.arange(h * w, dtype=jnp.float32).reshape(1, h, w, 1)
  xs = vmamba.cross_scan(grid)[0, :, :, 0]
  np.testing.assert_array_equal(xs[0], [0, 1, 2, 3, 4, 5])    # row-major
  np.testing.assert_array_equal(xs[1], [0, 3, 1, 4, 2, 5])    # column-major
  np.testing.assert_array_equal(xs[2], [5, 4, 3, 2, 1, 0])
  np.testing.assert_array_equal(xs[3], [5, 2, 4, 1, 3, 0])
  np.testing.assert_array_equal(vmamba.cross_merge(vmamba.cross_scan(grid), h, w), 4 * grid)


def test_batched_directions_equal_separate_scans():
  """The one block-diagonal call equals four independent scans with each direction's A."""
  from kernels_pallas.selective_scan import reference
  keys = jax.random.split(jax.random.key(0), 6)
  b, k, length, d, n = 2, 4, 5, 3, 2
  xs = jax.random.normal(keys[0], (b, k, length, d))
  dts = jax.random.normal(keys[1], (b, k, length, d))
  bs = jax.random.normal(keys[2], (b, k, length, n))
  cs = jax.random.normal(keys[3], (b, k, length, n))
  a_logs = jax.random.normal(keys[4], (k * d, n))
  ds = jax.random.normal(keys[5], (k * d,))
  dt_bias = 0.1 * jnp.arange(k * d, dtype=jnp.float32).reshape(k, d)
  # jitted: op by op, every primitive of the five scans is dispatched (and compiled) alone
  out = jax.jit(lambda *v: vmamba.ss2d_scan(*v, 'sequential'))(
      xs, dts + dt_bias[None, :, None], bs, cs, -jnp.exp(a_logs), ds)
  one_scan = jax.jit(lambda *v: reference.selective_scan_xla(
      *v[:6], None, v[6], delta_softplus=True, sequential=True))
  for j in range(k):
    ref = one_scan(xs[:, j], dts[:, j], -jnp.exp(a_logs[j * d:(j + 1) * d]), bs[:, j], cs[:, j],
                   ds[j * d:(j + 1) * d], dt_bias[j])
    np.testing.assert_allclose(out[:, j], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name,params_m', [('vmamba_t', 30.2), ('vmamba_b', 89.0)])
def test_released_variants_param_counts(name, params_m):
  """The official README's #params (with head): VMamba-T 30M, VMamba-B 89M."""
  shapes = vmamba_keys.model_param_shapes(registry.build_model(name))
  count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) / 1e6
  assert abs(count - params_m) < 0.5, count


def test_cifar_testbed_fits_16mb_bf16():
  shapes = vmamba_keys.model_param_shapes(registry.build_model('vmamba_t_cifar10'))
  assert 2 * sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) <= 16 * 2 ** 20
