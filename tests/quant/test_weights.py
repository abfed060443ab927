"""Weight quantizer, the stored K-major layout and the quantized linear (fake vs integer forms)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax.quant import qtypes
from ouromamba_jax.quant import weights as wq
from ouromamba_jax.quant.config import ActSpec, WeightSpec
from tests.quant import naive


def _kernel(seed=0, shape=(24, 10)):
  return np.random.default_rng(seed).standard_t(4, size=shape).astype(np.float32) * 0.05


@pytest.mark.parametrize('bits', [4, 8])
def test_codes_match_naive_and_use_narrow_range(bits):
  w = _kernel()
  scale = wq.init_weight_scale(jnp.asarray(w), WeightSpec(bits))
  qmax = 2 ** (bits - 1) - 1
  codes = np.asarray(wq.quantize_weight_int(jnp.asarray(w), scale, bits))
  for o in range(w.shape[1]):
    s = naive.lp_search_symmetric(w[:, o], qmax)
    np.testing.assert_allclose(scale[o], s, rtol=1e-6)
    want = np.clip(np.round(w[:, o] / np.float32(scale[o])), -qmax, qmax)
    np.testing.assert_array_equal(codes[:, o], want)
  assert codes.dtype == np.int8 and codes.min() >= -qmax and codes.max() <= qmax
  assert codes.min() == -qmax or codes.max() == qmax


def test_kernel_layout_is_k_major_and_round_trips():
  q = jnp.asarray([[1, -8], [-1, 7], [3, 0]], jnp.int8)          # (in = 3, out = 2): odd in
  packed = np.asarray(wq.to_kernel_layout(q, packed=True))
  assert packed.dtype == np.uint8 and packed.shape == (2, 2)     # (out, ceil(in/2))
  assert packed[0, 0] == (1 | (0x3 << 4))       # out 0: in 0 (1) low, in 2 (3) high
  assert packed[0, 1] == 0xF                    # in 1 (-1) low, the odd length's pad high
  assert packed[1, 0] == 0x8                    # out 1: -8 low, 0 high
  np.testing.assert_array_equal(np.asarray(wq.to_kernel_layout(q, packed=False)), np.asarray(q).T)
  rng = np.random.default_rng(0)
  for rows in (1, 6, 7):
    q = jnp.asarray(rng.integers(-8, 8, size=(rows, 5)), jnp.int8)
    for packed in (True, False):
      stored = wq.to_kernel_layout(q, packed)
      np.testing.assert_array_equal(
          np.asarray(wq.codes_from_kernel_layout(stored, rows, packed)), q)
  with pytest.raises(ValueError, match='2-D'):
    wq.to_kernel_layout(jnp.zeros((2, 3, 4), jnp.int8), True)


def _fake_quantized_kernel(w, scale, bits):
  """The calibration form's quantize-dequantized kernel: its Linear applied to the identity."""
  weight = qtypes.FakeQuantWeight(w, scale, None, bits)
  return weight.linear(jnp.eye(w.shape[0]), None, jnp.float32)


def test_weight_ste_gradients():
  w = jnp.asarray(_kernel(1))
  scale = wq.init_weight_scale(w, WeightSpec(4))
  gw = jax.grad(lambda w: _fake_quantized_kernel(w, scale, 4).sum())(w)
  inside = np.abs(np.asarray(w / scale[None, :])) <= 7
  np.testing.assert_allclose(np.asarray(gw)[inside], 1.0, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(gw)[~inside], 0.0)
  gs = jax.grad(lambda s: jnp.sum((_fake_quantized_kernel(w, s, 4) - w) ** 2))(scale)
  assert np.all(np.isfinite(np.asarray(gs))) and np.any(np.asarray(gs) != 0)


def _activations(seed=0, shape=(2, 13, 24)):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape).astype(np.float32)
  x[:, :, 3] *= 10
  x[0, 4, 11] = 40
  return jnp.asarray(x)


@pytest.mark.parametrize('w_bits,act_spec', [
    (4, ActSpec(bits=4)), (8, ActSpec(bits=8)), (4, ActSpec(bits=8, outliers='float')),
    (4, ActSpec(bits=4, outliers='none')), (4, ActSpec(bits=8, symmetric=False, outliers='none')),
    (4, ActSpec(bits=4, symmetric=False, k=4.0)),
], ids=lambda v: str(v) if isinstance(v, int) else v.describe())
def test_linear_fake_and_int_modes_agree_exactly(w_bits, act_spec):
  x = _activations()
  w = jnp.asarray(_kernel(2))
  quantizer = qtypes.ActQuantizer.calibrate(x, act_spec)
  weight = qtypes.FakeQuantWeight(w, wq.init_weight_scale(w, WeightSpec(w_bits)), None, w_bits)
  fake = jax.jit(lambda x: weight.linear(x, quantizer, jnp.float32))(x)
  frozen = weight.freeze('fake')
  assert frozen.packed == (w_bits <= 4)
  fake_frozen = jax.jit(lambda x: frozen.linear(x, quantizer, jnp.float32))(x)
  as_int = jax.jit(lambda x: qtypes.with_mode(frozen, 'int').linear(
      x, qtypes.with_mode(quantizer, 'int'), jnp.float32))(x)
  np.testing.assert_array_equal(np.asarray(fake), np.asarray(fake_frozen))
  np.testing.assert_array_equal(np.asarray(fake), np.asarray(as_int))
  # and it is the product of the dequantized operands
  dequantized = frozen.codes().astype(jnp.float32) * frozen.scale[None, :]
  want = jnp.einsum('bli,io->blo', quantizer(x), dequantized,
                    precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(np.asarray(fake), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_act_quantizer_modes_agree_and_smoothing_is_applied():
  x = _activations(1)
  q = qtypes.ActQuantizer.calibrate(x, ActSpec(bits=4))
  np.testing.assert_array_equal(np.asarray(q(x)), np.asarray(q.replace(mode='int')(x)))
  w = jnp.asarray(_kernel(3))
  smooth = jnp.linspace(0.5, 2.0, 24)
  weight = qtypes.FakeQuantWeight(w, wq.init_weight_scale(w * smooth[:, None], WeightSpec(8)),
                                  smooth, 8)
  y = weight.linear(x, None, jnp.float32)
  np.testing.assert_allclose(np.asarray(y), np.asarray(x @ w), rtol=0.05, atol=0.05)


def test_bad_mode_rejected():
  with pytest.raises(ValueError, match='mode must be one of'):
    qtypes.quantized_linear(jnp.ones((1, 2, 3)), jnp.ones((3, 4), jnp.int8), jnp.ones(4), None,
                            None, 'real', jnp.float32)
