"""Per-step outlier activation quantizer vs the naive NumPy transcription of the spec."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax.quant import activations as act
from ouromamba_jax.quant import int_linear
from ouromamba_jax.quant import qtypes
from ouromamba_jax.quant.config import ActSpec
from tests.quant import naive


def _scales(x, spec, factor=1.0):
  s, z = act.calibrate_inlier_scale(jnp.asarray(x), spec, 'steps')
  return np.asarray(s) * factor, None if z is None else np.asarray(z)


def _fake_quantize(x, s, spec, z=None, layout='steps'):
  """The calibration's fake-quant form: a mode-'fake' site quantizer called on x."""
  return qtypes.ActQuantizer(s, z, spec, layout)(x)


@pytest.mark.parametrize('spec', [ActSpec(bits=4), ActSpec(bits=8, symmetric=False, k=4.0),
                                  ActSpec(bits=4, outliers='float', trigger='official')],
                         ids=lambda s: s.describe())
def test_fake_equals_dequantized_integer_form(spec):
  x = jnp.asarray(naive.moving_outliers(3))
  s, z = _scales(x, spec, factor=0.8)
  z = None if z is None else jnp.asarray(z)
  fake = jax.jit(lambda x, s: _fake_quantize(x, s, spec, z))(x, jnp.asarray(s))
  # the integer codes of int mode (act_quant, its XLA form), dequantized
  deq = jax.jit(lambda x, s: act.dequantize_activation(int_linear.quantize_site(
      x, qtypes.ActQuantizer(s, z, spec, mode='int'), 'xla')))(x, jnp.asarray(s))
  np.testing.assert_array_equal(np.asarray(fake), np.asarray(deq))


def test_ste_gradients():
  x = jnp.asarray(naive.moving_outliers(4))
  spec = ActSpec(bits=4)
  s, _ = _scales(x, spec, factor=0.6)
  s = jnp.asarray(s)
  gx = jax.grad(lambda x: _fake_quantize(x, s, spec).sum())(x)
  mask = act.detect_outliers(x, s, spec)
  inside = np.asarray(mask | (jnp.abs(x / s[None, :, None]) <= spec.qmax))
  # identity inside the range (up to (1 / s) * s rounding)
  np.testing.assert_allclose(np.asarray(gx)[inside], 1.0, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(gx)[~inside], 0.0)     # clipped inliers: no gradient
  # every outlier (its dynamic grid holds it) keeps gradient 1, including the largest one
  assert (~inside).any()
  gs = jax.grad(lambda s: jnp.sum((_fake_quantize(x, s, spec) - x) ** 2))(s)
  assert np.all(np.isfinite(np.asarray(gs))) and np.any(np.asarray(gs) != 0)


def test_calibrated_scale_matches_naive_search():
  x = naive.moving_outliers(5, shape=(4, 15, 24))
  for spec in (ActSpec(bits=4), ActSpec(bits=4, symmetric=False, k=4.0, n_refresh=4)):
    s, z = act.calibrate_inlier_scale(jnp.asarray(x), spec, 'steps')
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
  s, _ = act.calibrate_inlier_scale(a, spec, 'tensor')
  assert s.shape == (1,)
  y = _fake_quantize(a, s, spec, layout='tensor')
  assert y.shape == a.shape and float(jnp.abs(y - a).max()) < float(jnp.abs(a).max()) / 7
  x = jnp.ones((2, 9, 4))
  for mode in ('fake', 'int'):
    with pytest.raises(ValueError, match='recalibrate for this sequence length'):
      qtypes.ActQuantizer(jnp.ones((7,)), None, spec, mode=mode)(x)


