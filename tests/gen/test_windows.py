"""OuroMamba-Gen on MambaVision's windowed mixers (tiny model): blocks, window neighbourhood,
loss, gradient, a short generate run."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax.gen import generator, objective, patched_state, windows
from ouromamba_jax.gen.spec import GenSpec
from ouromamba_jax.models import build_model
from tests import random_init
from tests.gen.conftest import check_state_losses, tiny_gen_spec

SPEC = GenSpec(num_positives=4, neighbourhood=3, pse_weight=0.5)


def tiny_mambavision(**overrides):
  """16x16 images, stride-1 stem: grids 16, 8, 4, 2; stage 3 is one 4x4 window, stage 4 one
  2x2 window. Mixers: stage 3's block 0 (of 2; block 1 is attention), stage 4's block 0."""
  fields = dict(img_size=16, dim=8, in_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2),
                window_size=(4, 4, 4, 2), stem_strides=(1, 1), num_classes=5,
                scan_implementation='xla')
  fields.update(overrides)
  return build_model('mambavision_t_cifar10', **fields)


@pytest.fixture(scope='module')
def tiny():
  model = tiny_mambavision()
  return model, random_init.init_params(model, jnp.zeros((1, 16, 16, 3)))


def test_mixer_blocks_and_loss_blocks():
  model = tiny_mambavision()
  assert model.stage_grids() == ((16, 16), (8, 8), (4, 4), (2, 2))
  assert model.mixer_blocks() == [(2, 0), (3, 0)]
  assert windows.loss_blocks(model, SPEC) == (0,)
  with pytest.raises(ValueError, match='do not give whole'):
    windows.loss_blocks(model, dataclasses.replace(SPEC, loss_blocks=(1,)))
  with pytest.raises(ValueError, match=r'gen.loss_blocks \[2\] are out of range for the 2 mixer'):
    windows.loss_blocks(model, dataclasses.replace(SPEC, loss_blocks=(2,)))
  with pytest.raises(ValueError, match='lower gen.neighbourhood'):
    windows.loss_blocks(model, dataclasses.replace(SPEC, neighbourhood=5))
  testbed = build_model('mambavision_t_cifar10')
  assert testbed.stage_grids()[2:] == ((8, 8), (4, 4))
  assert windows.loss_blocks(testbed, GenSpec()) == (0, 1, 2, 3)   # stage 3's four mixers
  official = build_model('mambavision_t')
  assert official.stage_grids()[2:] == ((14, 14), (7, 7))
  assert windows.loss_blocks(official, GenSpec()) == tuple(range(6))


def test_hooked_forward_is_the_plain_forward(tiny):
  model, params = tiny
  seen = []

  def hook(states, delta, c_mat, *, grid_size, windows):
    seen.append((states.shape, delta.shape, c_mat.shape, grid_size, windows))
    return {}
  hooked = model.clone(state_feature_fn=hook)
  x = random_init.normal(3, (2, 16, 16, 3))
  apply = lambda m: jax.jit(lambda p, x: m.apply({'params': p}, x))(params, x)
  np.testing.assert_allclose(apply(hooked), apply(model), rtol=1e-5, atol=1e-6)
  # stage 3: width 32 -> Di/2 = 16, one 4x4 window per image; stage 4: width 64, one 2x2 window
  assert seen == [((2, 16, 16, 8), (2, 16, 16), (2, 16, 8), (4, 4), 1),
                  ((2, 4, 32, 8), (2, 4, 32), (2, 4, 8), (2, 2), 1)]


def test_window_features_match_a_brute_force_neighbourhood():
  """Two images of 2x2 windows of 3x3 tokens: each window's box sum stays inside it, the Δ
  weights are min-max normalised over all of an image's windows."""
  b, nw, ws, d, n, p = 2, 4, 3, 3, 2, 3
  states = random_init.normal(0, (b * nw, ws * ws, d, n))
  delta = np.logaddexp(random_init.normal(1, (b * nw, ws * ws, d)), 0).astype(np.float32)
  c = random_init.normal(2, (b * nw, ws * ws, n))
  got = jax.jit(lambda *a: patched_state.grid_patch_features(
      *a, grid_size=(ws, ws), neighbourhood=p, weight_groups=nw))(states, delta, c)
  m = np.asarray(delta).mean(-1).reshape(b, nw * ws * ws)
  wts = ((m - m.min(1, keepdims=True)) / (m.max(1, keepdims=True) - m.min(1, keepdims=True))
         ).reshape(b * nw, ws * ws)
  hs, cs = np.asarray(states), np.asarray(c)
  want = np.zeros((b * nw, ws * ws, d))
  for r in range(b * nw):
    for i in range(ws):
      for j in range(ws):
        hp = sum(wts[r, k] * hs[r, k]
                 for k in (min(max(i + di, 0), ws - 1) * ws + min(max(j + dj, 0), ws - 1)
                           for di in range(-1, 2) for dj in range(-1, 2)))
        want[r, i * ws + j] = hp @ cs[r, i * ws + j]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_loss_is_finite_and_reaches_the_pixels(tiny):
  model, params = tiny
  check_state_losses(model, params, SPEC, random_init.normal(1, (2, 16, 16, 3)))


def test_unwhole_windows_are_refused(tiny):
  _, params = tiny                                     # window sizes do not change the params
  model = tiny_mambavision(window_size=(4, 4, 3, 2))   # 4x4 grid, 3-wide windows: padded
  with pytest.raises(ValueError, match='whole windows'):
    objective.check_objective(SPEC, model)
  with pytest.raises(ValueError, match='needs whole windows'):   # the model refuses it too
    model.clone(state_feature_fn=lambda *a, **k: {}).apply({'params': params},
                                                             jnp.zeros((1, 16, 16, 3)))


def test_generate_lowers_the_loss(tiny):
  model, params = tiny
  spec = tiny_gen_spec(num_images=2, images_per_step=2, iterations=6, neighbourhood=3,
                       checkpoint_every=0, quality_check=False, remat=False)
  result = generator.generate(model, params, spec, seed=0)
  assert result.images.shape == (2, 16, 16, 3) and np.all(np.isfinite(result.images))
  total = result.history[0]['total']
  assert np.all(np.isfinite(total)) and total[-1] < total[0]
