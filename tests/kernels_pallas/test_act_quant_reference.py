"""The canonical integer activation quantizer (act_quant's XLA reference) vs the naive NumPy
transcription of the spec (tests/quant/naive.py)."""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.act_quant import reference
from kernels_pallas.act_quant.config import ActQuantParams
from tests.quant import naive


def _scales(x, params, factor=1.0):
  """Per-step static steps from the step's pooled range (min-max; the library calibrates with
  an lp search, which only moves the steps), shrunk by `factor` so the trigger fires at some
  steps and not at others; zero points for asymmetric grids."""
  x = np.asarray(x, np.float32)
  if params.symmetric:
    return np.abs(x).max(axis=(0, 2)) / params.qmax * np.float32(factor), None
  lo = np.minimum(x.min(axis=(0, 2)), 0.0)
  hi = np.maximum(x.max(axis=(0, 2)), 0.0)
  s = ((hi - lo) / params.qmax * factor).astype(np.float32)
  return s, np.clip(np.round(-lo / s), 0, params.qmax).astype(np.float32)  # a code of the grid


def _naive(x, s, spec, z=None):
  return naive.act_quant(x, s, bits=spec.bits, symmetric=spec.symmetric, outliers=spec.outliers,
                         outlier_bits=spec.outlier_bits, k=spec.k, n_refresh=spec.n_refresh,
                         trigger=spec.trigger, ddof=spec.std_ddof, zero_point=z)


CASES = [
    ActQuantParams(bits=4),                                # W4A4O8, per sample
    ActQuantParams(bits=4, trigger='batch'),
    ActQuantParams(bits=4, trigger='official'),
    ActQuantParams(bits=8, outliers='float'),              # W4A8 (O16)
    ActQuantParams(bits=4, outliers='none'),
    ActQuantParams(bits=4, symmetric=False, k=4.0),        # Δ
    ActQuantParams(bits=4, n_refresh=1),
    ActQuantParams(bits=4, n_refresh=4, std_ddof=0, k=2.0),
    ActQuantParams(bits=3, n_refresh=50),                  # one window longer than L
]


@pytest.mark.parametrize('spec', CASES, ids=str)
def test_matches_naive_transcription(spec):
  x = naive.moving_outliers()
  # Shrink the calibrated steps so the trigger fires at some steps and not at others.
  s, z = _scales(x, spec, factor=0.7)
  want_y, want_mask = _naive(x, s, spec, z)
  got = reference.act_quant_xla(jnp.asarray(x), jnp.asarray(s), spec,
                                    None if z is None else jnp.asarray(z))
  np.testing.assert_array_equal(np.asarray(got.outlier_mask), want_mask)
  # 1-ulp slack: XLA may turn x / s into x * (1 / s) in the dequantized product.
  np.testing.assert_allclose(np.asarray(reference.dequantize(got)), want_y, rtol=2e-7,
                             atol=1e-6)
  if spec.outliers != 'none':
    assert want_mask.any() and not want_mask.all()


def test_trigger_is_per_sample_by_default_and_global_with_batch():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 5, 16)).astype(np.float32) * 0.1
  x[0, 1, 3] = 50.0       # only sample 0 overflows at t = 1
  x[1, 1, 7] = 0.9        # sample 1 has a channel that is an outlier by mu + 3 sigma only
  s = np.full(5, 1.0, np.float32)
  per_sample = reference.detect_outliers(jnp.asarray(x), jnp.asarray(s), ActQuantParams(bits=4))
  batch = reference.detect_outliers(jnp.asarray(x), jnp.asarray(s),
                                    ActQuantParams(bits=4, trigger='batch'))
  assert bool(per_sample[0, 1, 3]) and not bool(per_sample[1].any())
  assert bool(batch[0, 1, 3]) and bool(batch[1, 1, 7])
  assert int(batch[1].sum()) == 4          # stays flagged until the end of the window (t = 1..4)


def test_outlier_set_grows_inside_window_and_resets_at_refresh():
  x = np.full((1, 12, 16), 0.1, np.float32)
  x[0, :, 0] = np.linspace(-0.1, 0.1, 12)   # avoid a zero std
  x[0, 2, 4] = 40.0                          # flagged at t = 2 ...
  s = np.full(12, 0.5, np.float32)
  mask = np.asarray(reference.detect_outliers(jnp.asarray(x), jnp.asarray(s),
                                        ActQuantParams(bits=4, n_refresh=5)))
  # ... kept for t = 2, 3, 4 (window [0, 5)), dropped at the refresh t = 5.
  np.testing.assert_array_equal(mask[0, :, 4], [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
  assert mask[0, :, :4].sum() == 0 and mask[0, :, 5:].sum() == 0


def test_narrow_range_codes():
  x = naive.moving_outliers(2)
  spec = ActQuantParams(bits=4)
  s, _ = _scales(x, spec, factor=0.3)       # small steps: many inliers saturate
  q = reference.act_quant_xla(jnp.asarray(x), jnp.asarray(s), spec)
  assert q.inlier_q.dtype == jnp.int8 and q.outlier_q.dtype == jnp.int8
  assert int(q.inlier_q.min()) == -7 and int(q.inlier_q.max()) == 7
  assert int(jnp.abs(q.outlier_q).max()) == 127
  assert q.outlier_scale.shape == x.shape[:2] and q.outlier_mask.dtype == jnp.bool_
  # inlier codes vanish on outlier channels and vice versa
  assert not bool(jnp.any((q.inlier_q != 0) & q.outlier_mask))
  assert not bool(jnp.any((q.outlier_q != 0) & ~q.outlier_mask))


def test_asymmetric_zero_stays_zero():
  """Zeroed outlier entries must dequantize to exactly 0 on the asymmetric grid."""
  x = naive.moving_outliers(7) - 2.0
  spec = ActQuantParams(bits=4, symmetric=False, k=2.0)
  s, z = _scales(x, spec)
  q = reference.act_quant_xla(jnp.asarray(x), jnp.asarray(s), spec, jnp.asarray(z))
  assert q.outlier_mask.any()
  np.testing.assert_array_equal(
      np.asarray(q.inlier_q)[np.asarray(q.outlier_mask)],
      np.broadcast_to(np.asarray(z)[None, :, None], x.shape)[np.asarray(q.outlier_mask)])
  assert dataclasses.replace(spec, bits=8).qmax == 255
