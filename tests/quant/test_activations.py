"""Per-step outlier activation quantizer vs the naive NumPy transcription of the spec."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax.quant import activations as act
from ouromamba_jax.quant.config import ActSpec
from tests.quant import naive


def _moving_outliers(seed=0, shape=(3, 23, 24)):
  """Gaussian activations with outlier channels that move over time and differ per sample."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape).astype(np.float32)
  b, length, c = shape
  for t in range(length):
    x[:, t, (t // 4) % c] *= 9.0           # a channel that drifts every 4 steps
  x[0, 2, 5] = 25.0                         # one-off spikes (mu + k sigma over C channels can
                                            # exceed k only if (C - 1) / sqrt(C) > k)
  x[1, 13, 1] = -30.0
  return x


def _scales(x, spec, factor=1.0):
  s, z = act.calibrate_inlier_scale(jnp.asarray(x), spec)
  return np.asarray(s) * factor, None if z is None else np.asarray(z)


def _naive(x, s, spec, z=None):
  return naive.act_quant(x, s, bits=spec.bits, symmetric=spec.symmetric, outliers=spec.outliers,
                         outlier_bits=spec.outlier_bits, k=spec.k, n_refresh=spec.n_refresh,
                         trigger=spec.trigger, ddof=spec.std_ddof, zero_point=z)


CASES = [
    ActSpec(bits=4),                                               # W4A4O8, per sample
    ActSpec(bits=4, trigger='batch'),
    ActSpec(bits=4, trigger='official'),
    ActSpec(bits=8, outliers='float'),                             # W4A8 (O16)
    ActSpec(bits=4, outliers='none'),
    ActSpec(bits=4, symmetric=False, k=4.0),                       # Δ
    ActSpec(bits=4, n_refresh=1),
    ActSpec(bits=4, n_refresh=4, std_ddof=0, k=2.0),
    ActSpec(bits=3, n_refresh=50),                                 # one window longer than L
]


@pytest.mark.parametrize('spec', CASES, ids=lambda s: s.describe())
def test_matches_naive_transcription(spec):
  x = _moving_outliers()
  # Shrink the calibrated steps so the trigger fires at some steps and not at others.
  s, z = _scales(x, spec, factor=0.7)
  want_y, want_mask = _naive(x, s, spec, z)
  got = act.quantize_activation_int(jnp.asarray(x), jnp.asarray(s), spec,
                                    None if z is None else jnp.asarray(z))
  np.testing.assert_array_equal(np.asarray(got.outlier_mask), want_mask)
  # 1-ulp slack: XLA may turn x / s into x * (1 / s) in the dequantized product.
  np.testing.assert_allclose(np.asarray(act.dequantize_activation(got)), want_y, rtol=2e-7,
                             atol=1e-6)
  if spec.outliers != 'none':
    assert want_mask.any() and not want_mask.all()


def test_trigger_is_per_sample_by_default_and_global_with_batch():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 5, 16)).astype(np.float32) * 0.1
  x[0, 1, 3] = 50.0       # only sample 0 overflows at t = 1
  x[1, 1, 7] = 0.9        # sample 1 has a channel that is an outlier by mu + 3 sigma only
  s = np.full(5, 1.0, np.float32)
  per_sample = act.detect_outliers(jnp.asarray(x), jnp.asarray(s), ActSpec(bits=4))
  batch = act.detect_outliers(jnp.asarray(x), jnp.asarray(s), ActSpec(bits=4, trigger='batch'))
  assert bool(per_sample[0, 1, 3]) and not bool(per_sample[1].any())
  assert bool(batch[0, 1, 3]) and bool(batch[1, 1, 7])
  assert int(batch[1].sum()) == 4          # stays flagged until the end of the window (t = 1..4)


def test_outlier_set_grows_inside_window_and_resets_at_refresh():
  x = np.full((1, 12, 16), 0.1, np.float32)
  x[0, :, 0] = np.linspace(-0.1, 0.1, 12)   # avoid a zero std
  x[0, 2, 4] = 40.0                          # flagged at t = 2 ...
  s = np.full(12, 0.5, np.float32)
  mask = np.asarray(act.detect_outliers(jnp.asarray(x), jnp.asarray(s),
                                        ActSpec(bits=4, n_refresh=5)))
  # ... kept for t = 2, 3, 4 (window [0, 5)), dropped at the refresh t = 5.
  np.testing.assert_array_equal(mask[0, :, 4], [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
  assert mask[0, :, :4].sum() == 0 and mask[0, :, 5:].sum() == 0


def test_narrow_range_codes():
  x = _moving_outliers(2)
  spec = ActSpec(bits=4)
  s, _ = _scales(x, spec, factor=0.3)       # small steps: many inliers saturate
  q = act.quantize_activation_int(jnp.asarray(x), jnp.asarray(s), spec)
  assert q.inlier_q.dtype == jnp.int8 and q.outlier_q.dtype == jnp.int8
  assert int(q.inlier_q.min()) == -7 and int(q.inlier_q.max()) == 7
  assert int(jnp.abs(q.outlier_q).max()) == 127
  assert q.outlier_scale.shape == x.shape[:2] and q.outlier_mask.dtype == jnp.bool_
  # inlier codes vanish on outlier channels and vice versa
  assert not bool(jnp.any((q.inlier_q != 0) & q.outlier_mask))
  assert not bool(jnp.any((q.outlier_q != 0) & ~q.outlier_mask))


@pytest.mark.parametrize('spec', [ActSpec(bits=4), ActSpec(bits=8, symmetric=False, k=4.0),
                                  ActSpec(bits=4, outliers='float', trigger='official')],
                         ids=lambda s: s.describe())
def test_fake_equals_dequantized_integer_form(spec):
  x = jnp.asarray(_moving_outliers(3))
  s, z = _scales(x, spec, factor=0.8)
  z = None if z is None else jnp.asarray(z)
  fake = jax.jit(lambda x, s: act.fake_quantize_activation(x, s, spec, z))(x, jnp.asarray(s))
  deq = jax.jit(lambda x, s: act.dequantize_activation(
      act.quantize_activation_int(x, s, spec, z)))(x, jnp.asarray(s))
  np.testing.assert_array_equal(np.asarray(fake), np.asarray(deq))


def test_ste_gradients():
  x = jnp.asarray(_moving_outliers(4))
  spec = ActSpec(bits=4)
  s, _ = _scales(x, spec, factor=0.6)
  s = jnp.asarray(s)
  gx = jax.grad(lambda x: act.fake_quantize_activation(x, s, spec).sum())(x)
  mask = act.detect_outliers(x, s, spec)
  inside = np.asarray(mask | (jnp.abs(x / s[None, :, None]) <= spec.qmax))
  # identity inside the range (up to (1 / s) * s rounding)
  np.testing.assert_allclose(np.asarray(gx)[inside], 1.0, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(gx)[~inside], 0.0)     # clipped inliers: no gradient
  # every outlier (its dynamic grid holds it) keeps gradient 1, including the largest one
  assert (~inside).any()
  gs = jax.grad(lambda s: jnp.sum((act.fake_quantize_activation(x, s, spec) - x) ** 2))(s)
  assert np.all(np.isfinite(np.asarray(gs))) and np.any(np.asarray(gs) != 0)


def test_calibrated_scale_matches_naive_search():
  x = _moving_outliers(5, shape=(4, 15, 24))
  for spec in (ActSpec(bits=4), ActSpec(bits=4, symmetric=False, k=4.0, n_refresh=4)):
    s, z = act.calibrate_inlier_scale(jnp.asarray(x), spec)
    mask = naive.static_mask(x, spec.k, spec.n_refresh, spec.std_ddof)
    x_in = np.where(mask, 0, x)
    for t in range(x.shape[1]):
      pool = x_in[:, t, :].reshape(-1)
      # Neighbouring candidates are 1 % apart; 1e-6 only allows XLA's reciprocal rewrites.
      if spec.symmetric:
        np.testing.assert_allclose(s[t], naive.lp_search_symmetric(pool, spec.qmax), rtol=1e-6)
      else:
        want_s, want_z = naive.lp_search_asymmetric(pool, spec.qmax)
        np.testing.assert_allclose(s[t], want_s, rtol=1e-6)
        assert float(z[t]) == float(want_z)
    np.testing.assert_array_equal(np.asarray(act.static_outlier_mask(jnp.asarray(x), spec)),
                                  mask)


def test_per_tensor_site_and_sequence_length_check():
  a = -jnp.exp(jnp.asarray(np.random.default_rng(6).normal(size=(8, 4)), jnp.float32))
  spec = ActSpec(bits=4)
  s, _ = act.calibrate_inlier_scale(a, spec)
  assert s.shape == (1,)
  y = act.fake_quantize_activation(a, s, spec)
  assert y.shape == a.shape and float(jnp.abs(y - a).max()) < float(jnp.abs(a).max()) / 7
  x = jnp.ones((2, 9, 4))
  with pytest.raises(ValueError, match='recalibrate for this sequence length'):
    act.quantize_activation_int(x, jnp.ones((7,)), spec)


def test_asymmetric_zero_stays_zero():
  """Zeroed outlier entries must dequantize to exactly 0 on the asymmetric grid."""
  x = _moving_outliers(7) - 2.0
  spec = ActSpec(bits=4, symmetric=False, k=2.0)
  s, z = _scales(x, spec)
  q = act.quantize_activation_int(jnp.asarray(x), jnp.asarray(s), spec, jnp.asarray(z))
  assert q.outlier_mask.any()
  np.testing.assert_array_equal(
      np.asarray(q.inlier_q)[np.asarray(q.outlier_mask)],
      np.broadcast_to(np.asarray(z)[None, :, None], x.shape)[np.asarray(q.outlier_mask)])
  assert dataclasses.replace(spec, bits=8).qmax == 255
