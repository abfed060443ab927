"""lp clipping search vs the naive loop (first minimum wins)."""
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax.quant import search
from tests.quant import naive


@pytest.mark.parametrize('bits', [4, 8])
def test_symmetric_per_channel_matches_naive(bits):
  rng = np.random.default_rng(0)
  w = rng.standard_t(3, size=(40, 6)).astype(np.float32)
  qmax = 2 ** (bits - 1) - 1
  got = np.asarray(search.search_symmetric_scale(jnp.asarray(w), qmax, reduce_axes=(0,)))
  assert got.shape == (1, 6)
  for o in range(6):
    np.testing.assert_allclose(got[0, o], naive.lp_search_symmetric(w[:, o], qmax), rtol=1e-6)
  if bits == 4:                              # heavy tails at 4 bits: clipping pays off
    assert np.all(got[0] < np.abs(w).max(axis=0) / qmax)


def test_asymmetric_matches_naive():
  rng = np.random.default_rng(1)
  x = (rng.normal(size=(5, 30)) * 2 - 3).astype(np.float32)
  s, z = search.search_asymmetric_range(jnp.asarray(x), 15, reduce_axes=(1,))
  for g in range(5):
    want_s, want_z = naive.lp_search_asymmetric(x[g], 15)
    np.testing.assert_allclose(s[g, 0], want_s, rtol=1e-6)
    assert float(z[g, 0]) == float(want_z)


def test_minmax_is_the_full_range():
  x = jnp.asarray([[1.0, -3.0], [0.5, 2.0]])
  s = search.search_symmetric_scale(x, 7, reduce_axes=(0,), init='minmax')
  np.testing.assert_allclose(np.asarray(s), [[1.0 / 7, 3.0 / 7]], rtol=1e-6)
  s, z = search.search_asymmetric_range(x, 15, reduce_axes=(0, 1), init='minmax')
  np.testing.assert_allclose(float(s[0, 0]), 5.0 / 15, rtol=1e-6)
  assert float(z[0, 0]) == 9.0                 # round(3 / (5/15))


def test_first_minimum_wins_on_ties():
  # loss is flat (= 0) for j in [20, 40]: the first of them must be chosen.
  loss = lambda j: jnp.maximum(jnp.abs(j.astype(jnp.float32) - 30.0) - 10.0, 0.0)[None]
  best = search._first_minimum(loss, 100, (1,))
  assert int(best[0]) == 20


def test_all_zero_group_gets_the_floor_step():
  s = search.search_symmetric_scale(jnp.zeros((4, 2)), 7, reduce_axes=(0,))
  np.testing.assert_array_equal(np.asarray(s), np.full((1, 2), 1e-8, np.float32))
