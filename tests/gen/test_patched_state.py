"""The patched hidden state h_p against a token-by-token loop on states taken from a model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.patched_readout import reference as readout_ref
from ouromamba_jax.gen import patched_state
from tests import random_init


def _captured(model, params, images):
  """(states, delta, C) of both directions of block 0, as the model hands them to the hook."""
  capture = model.clone(state_feature_fn=lambda s, d, c: (s, d, c))
  _, state = capture.apply({'params': params}, images, mutable=['intermediates'])
  mixer = state['intermediates']['layers_0']['mixer']
  return [jax.tree.map(np.asarray, mixer[f'state_features_{d}'][0])
          for d in ('forward', 'backward')]


def _brute_force(states, delta, c_mat, cls, grid, size, normalization):
  """h_p and C_τ·h_p(τ) with explicit loops over images, patches and window offsets."""
  b, _, d, n = states.shape
  gh, gw = grid
  r = size // 2

  def token(row, col):  # patch (row, col) -> its index in the sequence with the class token
    k = row * gw + col
    return k if k < cls else k + 1

  hp = np.zeros((b, gh * gw, d, n), np.float64)
  feats = np.zeros((b, gh * gw, d), np.float64)
  for i in range(b):
    m = np.array([delta[i, token(y, x)].mean() for y in range(gh) for x in range(gw)])
    if normalization == 'minmax':
      w = (m - m.min()) / (m.max() - m.min())
    elif normalization == 'mean':
      w = m / m.mean()
    else:
      w = m
    for y in range(gh):
      for x in range(gw):
        for dy in range(-r, r + 1):
          for dx in range(-r, r + 1):
            yy, xx = min(max(y + dy, 0), gh - 1), min(max(x + dx, 0), gw - 1)
            hp[i, y * gw + x] += w[yy * gw + xx] * states[i, token(yy, xx)]
        feats[i, y * gw + x] = hp[i, y * gw + x] @ c_mat[i, token(y, x)]
  return hp, feats


@pytest.mark.parametrize('size,normalization', [(5, 'minmax'), (3, 'mean'), (1, 'none')])
def test_patched_state_matches_brute_force_loop(tiny, size, normalization):
  model, params = tiny
  images = jnp.asarray(random_init.normal(1, (2, 32, 32, 3)))
  assert model.cls_index == 8  # the middle of 16 patch tokens, where Vim puts it
  for states, delta, c_mat in _captured(model, params, images):
    # Δ after softplus: Vim's dt bias puts softplus(Δ) in [1e-3, 0.1] (pre-softplus Δ < 0).
    assert 0 < delta.min() and delta.max() < 1.0
    kw = dict(cls_index=model.cls_index, grid_size=model.grid_size, neighbourhood=size,
              normalization=normalization)
    hp = patched_state.patched_states(states, delta, **kw)
    feats = patched_state.patch_features(states, delta, c_mat, **kw)
    want_hp, want_feats = _brute_force(states, delta, c_mat, model.cls_index, model.grid_size,
                                       size, normalization)
    # min-max over nearly equal Δ means amplifies fp32 rounding (~1e-4 relative); a wrong
    # neighbour or class-token mapping would be off by O(1).
    np.testing.assert_allclose(hp, want_hp, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(feats, want_feats, rtol=2e-3, atol=1e-6)


def test_delta_weights_are_normalised_per_image(tiny):
  """Changing one image leaves the other images' Δ weights (and its own losses) untouched."""
  model, params = tiny
  images = jnp.asarray(random_init.normal(2, (3, 32, 32, 3)))
  changed = images.at[1].set(5.0 * jnp.asarray(random_init.normal(3, (32, 32, 3))))

  def weights(x):
    out = []
    for _, delta, _ in _captured(model, params, x):
      delta = readout_ref.drop_class_token(jnp.asarray(delta), model.cls_index)
      out.append(np.asarray(patched_state.token_weights(delta, 'delta', 'minmax')))
    return out

  for before, after in zip(weights(images), weights(changed)):
    np.testing.assert_allclose(before.min(axis=1), 0.0, atol=1e-7)
    np.testing.assert_allclose(before.max(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(before[[0, 2]], after[[0, 2]])
    assert not np.allclose(before[1], after[1])


def test_uniform_weighting_gives_ones():
  delta = jax.random.uniform(jax.random.key(0), (2, 6, 3))
  np.testing.assert_array_equal(patched_state.token_weights(delta, 'uniform'), np.ones((2, 6)))


def test_bad_option_names_are_rejected():
  delta = jnp.ones((1, 4, 2))
  with pytest.raises(ValueError, match='delta_normalization'):
    patched_state.token_weights(delta, 'delta', 'batch')
  with pytest.raises(ValueError, match='state_weighting'):
    patched_state.token_weights(delta, 'gate')


def test_bad_layout_and_implementation_are_rejected():
  states, delta, c_mat = jnp.ones((1, 5, 2, 3)), jnp.ones((1, 5, 2)), jnp.ones((1, 5, 3))
  kw = dict(cls_index=2, grid_size=(2, 2))
  with pytest.raises(ValueError, match="states_layout must be one of .* got 'bogus'"):
    patched_state.patch_features(states, delta, c_mat, feature='state', states_layout='bogus',
                                 **kw)
  with pytest.raises(ValueError, match='states_layout'):
    patched_state.patch_features(states, delta, c_mat, states_layout='bogus', **kw)
  for impl in ('triton', 'nonsense'):
    with pytest.raises(ValueError, match="with feature='state'"):
      patched_state.patch_features(states, delta, c_mat, feature='state', implementation=impl,
                                   **kw)
  with pytest.raises(ValueError, match='unknown implementation'):
    patched_state.patch_features(states, delta, c_mat, implementation='nonsense', **kw)
