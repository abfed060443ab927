"""act_quant on a producer (`producers.DirectionMean`, `producers.RMSNormed`) vs act_quant on
the materialized array.

The kernel forms each row from the operands in registers; its codes, scales and masks must be
those of the XLA quantizer on `materialize()` bit for bit (CPU, interpret mode), and on the
GPU within the threshold ties every act_quant form has.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.act_quant import api, producers
from kernels_pallas.act_quant.config import ActQuantParams
from tests.interpreted import CPU_FAST_COMPILE
from tests.kernels_pallas.abstract_gpu import abstract_h100
from tests.kernels_pallas.test_act_quant import FIELDS, _activations


def _direction_mean(rng, b, l, c, dtype=jnp.bfloat16):
  """Two direction outputs whose mean keeps the heavy tails of `_activations`."""
  forward = _activations(rng, b, l, c, dtype)
  backward = _activations(rng, b, l, c, dtype)
  return producers.DirectionMean(forward, backward, jnp.dtype(dtype))


def _rms_normed(rng, b, l, c, dtype=jnp.bfloat16):
  """A residual stream with heavy-tailed channels, normalized as `models.layers.RMSNorm` does
  (its producer form, so 1/rms is XLA's)."""
  from ouromamba_jax.models import layers  # pylint: disable=g-import-not-at-top
  residual = _activations(rng, b, l, c, jnp.float32) * 3.0
  weight = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
  return layers.RMSNorm().apply({'params': {'weight': weight}}, residual,
                                as_producer=jnp.dtype(dtype))


def test_materialize_is_the_mean_of_forward_and_flipped_backward():
  rng = np.random.default_rng(0)
  x = _direction_mean(rng, 2, 7, 24)
  f = np.asarray(x.forward, np.float32)
  b = np.asarray(x.backward, np.float32)[:, ::-1]
  want = jnp.asarray((f + b) / 2).astype(jnp.bfloat16)
  got = x.materialize()
  assert got.dtype == jnp.bfloat16 and got.shape == (2, 7, 24) == x.shape and x.ndim == 3
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  assert producers.materialize(got) is got and producers.is_produced(x)
  assert not producers.is_produced(got)


def test_rms_normed_materializes_to_the_models_rms_norm():
  """The producer stands for exactly what `RMSNorm` returns, cast: same bits."""
  from ouromamba_jax.models import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  x = _rms_normed(rng, 2, 7, 24)
  assert isinstance(x, producers.RMSNormed) and producers.is_produced(x)
  assert x.shape == (2, 7, 24) and x.ndim == 3 and x.inv_rms.shape == (2, 7)
  norm = layers.RMSNorm().apply({'params': {'weight': x.weight}}, x.residual)
  np.testing.assert_array_equal(np.asarray(x.materialize(), np.float32),
                                np.asarray(norm.astype(jnp.bfloat16), np.float32))


PRODUCER_CASES = [(_direction_mean, 'sample', 96, jnp.bfloat16),
                  (_direction_mean, 'sample', 40, jnp.float32),
                  (_direction_mean, 'batch', 96, jnp.bfloat16),
                  (_rms_normed, 'sample', 96, jnp.bfloat16),
                  (_rms_normed, 'sample', 40, jnp.float32),
                  (_rms_normed, 'batch', 96, jnp.bfloat16)]


@pytest.mark.parametrize('make,trigger,channels,dtype', PRODUCER_CASES,
                         ids=lambda v: getattr(v, '__name__', str(v)))
def test_kernel_on_a_producer_matches_codes_of_the_materialized_array(make, trigger, channels,
                                                                      dtype):
  """C = 96 runs as three chunks, C = 40 as one padded tile; L = 23 ends in a short window,
  so the backward operand's reversed index is checked at both ends of the sequence; 3 samples
  leave a masked row where a program holds two (the per-token and per-channel operands'
  loads)."""
  rng = np.random.default_rng(channels)
  x = make(rng, 3, 23, channels, dtype)
  scale = jnp.asarray(rng.uniform(1.0, 2.0, 23) / 7, jnp.float32)
  spec = ActQuantParams(bits=4, trigger=trigger)
  want = api.act_quant(x.materialize(), scale, spec, implementation='xla')
  run = lambda x, s: api.act_quant(x, s, spec, implementation='triton', interpret=True)
  got = jax.jit(run, compiler_options=CPU_FAST_COMPILE)(x, scale)
  for field in FIELDS:
    np.testing.assert_array_equal(np.asarray(getattr(got, field)),
                                  np.asarray(getattr(want, field)), err_msg=field)
  assert np.asarray(want.outlier_mask).any()
  xla = api.act_quant(x, scale, spec, implementation='xla')  # materializes itself
  np.testing.assert_array_equal(np.asarray(xla.inlier_q), np.asarray(want.inlier_q))


def test_dequantized_site_materializes_a_producer():
  rng = np.random.default_rng(3)
  x = _direction_mean(rng, 2, 12, 32)
  scale = jnp.asarray(rng.uniform(1.0, 2.0, 12) / 7, jnp.float32)
  spec = ActQuantParams(bits=4)
  got = api.act_quant_dequantized(x, scale, spec, implementation='xla')
  want = api.act_quant_dequantized(x.materialize(), scale, spec, implementation='xla')
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_bad_operands_are_rejected_clearly():
  a = jnp.zeros((2, 5, 8), jnp.bfloat16)
  with pytest.raises(ValueError, match='one shape'):
    producers.DirectionMean(a, a[:, :4], jnp.bfloat16)
  with pytest.raises(ValueError, match='float array'):
    producers.DirectionMean(a, a.astype(jnp.int8), jnp.bfloat16)
  r, w = jnp.zeros((2, 5), jnp.float32), jnp.ones((8,), jnp.float32)
  with pytest.raises(ValueError, match=r'inv_rms must have shape \(2, 5\)'):
    producers.RMSNormed(a, r[:, :4], w, jnp.bfloat16)
  with pytest.raises(ValueError, match='one per channel'):
    producers.RMSNormed(a, r, w[:4], jnp.bfloat16)
  with pytest.raises(ValueError, match='float array'):
    producers.RMSNormed(a, r, w.astype(jnp.int8), jnp.bfloat16)


@pytest.mark.parametrize('producer', ['direction_mean', 'rms_normed'])
def test_kernel_on_a_producer_lowers_to_triton_for_h100(producer):
  """Lowers (no compile) for an abstract H100 at Vim-B's out_proj / in_proj input."""
  from kernels_pallas.act_quant import pallas_triton  # pylint: disable=g-import-not-at-top
  if producer == 'direction_mean':
    operand = jax.ShapeDtypeStruct((64, 197, 1536), jnp.bfloat16)
    x = producers.DirectionMean(operand, operand, jnp.dtype(jnp.bfloat16))
  else:
    x = producers.RMSNormed(jax.ShapeDtypeStruct((64, 197, 768), jnp.float32),
                            jax.ShapeDtypeStruct((64, 197), jnp.float32),
                            jax.ShapeDtypeStruct((768,), jnp.float32), jnp.dtype(jnp.bfloat16))
  block_c = x.shape[2] // 3
  with abstract_h100():
    traced = pallas_triton.act_quant.trace(
        x, jax.ShapeDtypeStruct((197,), jnp.float32), None, code_range=(-7, 7, -127, 127),
        k=3.0, n_refresh=10, std_ddof=1, detect=True, block_c=block_c, block_b=1, num_warps=4,
        n_chunks=3, trigger='sample', with_mask=False)
    lowered = traced.lower(lowering_platforms=('cuda',))
  assert '__gpu$xla.gpu.triton' in lowered.as_text()


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a CUDA GPU')
@pytest.mark.parametrize('make,channels', [(_direction_mean, 1536), (_rms_normed, 768)],
                         ids=['direction_mean', 'rms_normed'])
def test_gpu_kernel_on_a_producer_at_vim_b_shape(make, channels):
  """Vim-B's out_proj input (C = 1536) and in_proj input (C = 768), batch 64: the producer
  formed in registers against XLA's materialized array quantized by XLA (threshold ties
  allowed, as elsewhere)."""
  rng = np.random.default_rng(12)
  x = make(rng, 64, 197, channels)
  scale = jnp.asarray(rng.uniform(0.3, 0.6, 197), jnp.float32)
  spec = ActQuantParams(bits=4)
  want = api.act_quant(x.materialize(), scale, spec, implementation='xla')
  got = api.act_quant(x, scale, spec, implementation='triton')
  for field in FIELDS:
    frac = np.mean(np.asarray(getattr(got, field)) != np.asarray(getattr(want, field)))
    print(f'{make.__name__} C={channels} {field}: mismatch fraction {frac:.2e}')
    assert frac < 1e-5, field
