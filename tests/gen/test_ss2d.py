"""OuroMamba-Gen on VMamba's SS2D (tiny model): grid mapping, neighbourhood, loss, gradient."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax.gen import patched_state, ss2d
from ouromamba_jax.gen.spec import GenSpec
from ouromamba_jax.models import vmamba
from tests import random_init
from tests.gen.conftest import check_state_losses

SPEC = GenSpec(num_positives=4, neighbourhood=3, pse_weight=0.5)


@pytest.fixture(scope='module')
def tiny():
  """Two stages on 16x16 images: grids 4x4 and 2x2 (only stage 0 fits a 3x3 window + 6 patches)."""
  model = vmamba.VMamba(num_classes=5, img_size=16, dims=8, depths=(2, 1), ssm_ratio=2.0,
                        scan_implementation='xla')
  return model, random_init.init_params(model, jnp.zeros((1, 16, 16, 3)))


def test_directions_to_grid_inverts_cross_scan():
  x = random_init.normal(0, (2, 3, 5, 4))
  back = vmamba.directions_to_grid(vmamba.cross_scan(x), 3, 5)
  for k in range(4):
    np.testing.assert_array_equal(back[:, k], x.reshape(2, 15, 4))
  ys = random_init.normal(1, (2, 4, 15, 4))
  np.testing.assert_allclose(vmamba.directions_to_grid(ys, 3, 5).sum(1).reshape(2, 3, 5, 4),
                             vmamba.cross_merge(ys, 3, 5), rtol=1e-6, atol=1e-6)


def test_grid_features_match_a_brute_force_neighbourhood():
  b, h, w, d, n, p = 2, 4, 5, 3, 2, 3
  states = random_init.normal(0, (b, h * w, d, n))
  delta = np.logaddexp(random_init.normal(1, (b, h * w, d)), 0).astype(np.float32)  # softplus
  c = random_init.normal(2, (b, h * w, n))
  got = jax.jit(lambda *a: patched_state.grid_patch_features(*a, grid_size=(h, w),
                                                             neighbourhood=p))(states, delta, c)
  m = np.asarray(delta).mean(-1)
  wts = (m - m.min(1, keepdims=True)) / (m.max(1, keepdims=True) - m.min(1, keepdims=True))
  hs, cs = np.asarray(states), np.asarray(c)
  want = np.zeros((b, h * w, d))
  for i in range(h):
    for j in range(w):
      hp = sum(wts[:, k, None, None] * hs[:, k]
               for k in (min(max(i + di, 0), h - 1) * w + min(max(j + dj, 0), w - 1)
                         for di in range(-1, 2) for dj in range(-1, 2)))
      want[:, i * w + j] = np.einsum('bdn,bn->bd', hp, cs[:, i * w + j])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_ss2d_states_are_each_directions_own_scan():
  """The folded four-direction scan's states (its diagonal blocks) equal a separate scan of
  each direction with its own A."""
  b, k, length, d, n = 2, 4, 6, 3, 2
  xs = random_init.normal(4, (b, k, length, d))
  deltas = random_init.normal(5, (b, k, length, d))
  bs, cs = random_init.normal(6, (b, k, length, n)), random_init.normal(7, (b, k, length, n))
  a = -np.exp(random_init.normal(8, (k * d, n)))

  @jax.jit   # one program: op by op, every primitive of the scans compiles on its own
  def folded_and_separate(xs, deltas, bs, cs, a):
    folded = vmamba.ss2d_scan(xs, deltas, bs, cs, a, jnp.ones((k * d,)), 'xla', True)
    return folded, [vmamba.scan_api.selective_scan(
        xs[:, j], deltas[:, j], a[j * d:(j + 1) * d], bs[:, j], cs[:, j], jnp.ones((d,)),
        delta_softplus=True, return_states=True, implementation='xla') for j in range(k)]

  (y, states), separate = folded_and_separate(xs, deltas, bs, cs, a)
  assert states.shape == (b, k, length, d, n)
  for j, (yj, sj) in enumerate(separate):
    np.testing.assert_allclose(states[:, j], sj, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[:, j], yj, rtol=1e-5, atol=1e-6)


def test_hooked_forward_is_the_plain_forward(tiny):
  model, params = tiny
  seen = []

  def hook(states, delta, c_mat, *, grid_size):
    seen.append((states.shape, delta.shape, c_mat.shape, grid_size))
    return {}
  hooked = model.clone(state_feature_fn=hook, state_blocks=(0, 2))
  x = random_init.normal(3, (1, 16, 16, 3))
  apply = lambda m: jax.jit(lambda p, x: m.apply({'params': p}, x))(params, x)
  np.testing.assert_allclose(apply(hooked), apply(model), rtol=1e-6)
  assert seen == [((1, 4, 16, 16, 1), (1, 4, 16, 16), (1, 4, 16, 1), (4, 4)),
                  ((1, 4, 4, 32, 1), (1, 4, 4, 32), (1, 4, 4, 1), (2, 2))]


def test_loss_blocks_are_the_blocks_whose_grid_fits(tiny):
  model, _ = tiny
  assert model.stage_grids() == ((4, 4), (2, 2))
  assert ss2d.loss_blocks(model, SPEC) == (0, 1)
  with pytest.raises(ValueError, match='too small'):
    ss2d.loss_blocks(model, dataclasses.replace(SPEC, loss_blocks=(2,)))
  with pytest.raises(ValueError, match=r'gen.loss_blocks \[5\] are out of range for a 3-block'):
    ss2d.loss_blocks(model, dataclasses.replace(SPEC, loss_blocks=(5,)))
  with pytest.raises(ValueError, match='lower gen.neighbourhood'):
    ss2d.loss_blocks(model, dataclasses.replace(SPEC, neighbourhood=5))
  testbed = vmamba.VMamba(img_size=32, dims=64, depths=(2, 2, 6), ssm_ratio=2.0)
  assert testbed.stage_grids() == ((8, 8), (4, 4), (2, 2))
  assert ss2d.loss_blocks(testbed, GenSpec()) == (0, 1)


def test_loss_is_finite_and_reaches_the_pixels(tiny):
  model, params = tiny
  check_state_losses(model, params, SPEC, random_init.normal(1, (2, 16, 16, 3)))
