"""Activation-quantization kernel vs the canonical integer quantizer, code for code.

The reference is `reference.act_quant_xla`; the Pallas kernel
runs in interpret mode on CPU and must give identical codes, scales and masks.
`test_kernel_lowers_to_triton_for_h100` also lowers it for an (abstract) H100.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import int4
from kernels_pallas.act_quant import api, config
from kernels_pallas.act_quant.config import ActQuantParams
from kernels_pallas.act_quant.reference import dequantize
from kernels_pallas.mixed_gemm import api as gemm_api
from tests.interpreted import CPU_FAST_COMPILE
from tests.kernels_pallas.abstract_gpu import abstract_h100

FIELDS = ('inlier_q', 'inlier_scale', 'outlier_q', 'outlier_scale', 'outlier_mask')


def _activations(rng, b, l, c, dtype=np.float32):
  """Heavy-tailed activations (many values near mu + k sigma, so threshold details matter)
  with a persistent loud channel and outliers that hop between channels (Mamba-like)."""
  x = rng.standard_t(2, (b, l, c)).astype(np.float32)
  x[:, :, 3] *= 6.0                       # a persistent outlier channel
  for t in range(0, l, 4):                # outliers that hop between channels
    x[:, t, (5 * t) % c] += 15.0 * rng.choice([-1.0, 1.0])
  return jnp.asarray(x, dtype)


def _assert_same(got, want):
  for field in FIELDS:
    g, w = getattr(got, field), getattr(want, field)
    assert g.shape == w.shape and g.dtype == w.dtype, (field, g.shape, g.dtype, w.shape, w.dtype)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=field)
  assert got.inlier_zero_point is None and got.outlier_zero_point is None
  assert got.inlier_q.shape == got.outlier_q.shape  # codes one per byte, int4 ones too


def _kernel(x, scale, spec, zero=None, *, fn=api.act_quant, **kw):
  """fn(..., implementation='triton', interpret=True) jitted with CPU_FAST_COMPILE."""
  run = lambda x, s, z: fn(x, s, spec, z, implementation='triton', interpret=True, **kw)
  return jax.jit(run, compiler_options=CPU_FAST_COMPILE)(x, scale, zero)


def _both(x, scale, spec, **kw):
  want = api.act_quant(x, scale, spec, implementation='xla', **kw)
  got = _kernel(x, scale, spec, **kw)
  return got, want


@pytest.mark.parametrize('bits', [4, 8])
def test_sample_trigger_matches_canonical(bits):
  # L = 23: windows [0, 10), [10, 20), [20, 23) (a short last one); C = 40 pads to a 64 block.
  rng = np.random.default_rng(bits)
  x = _activations(rng, 2, 23, 40)
  qmax = 2 ** (bits - 1) - 1
  scale = jnp.asarray(rng.uniform(2.0, 4.0, 23) / qmax, jnp.float32)
  spec = ActQuantParams(bits=bits, outlier_bits=8, trigger='sample')
  got, want = _both(x, scale, spec)
  _assert_same(got, want)
  mask = np.asarray(want.outlier_mask)
  assert mask.any() and not mask.all()
  for t in range(22):  # the set only grows inside a window and is reset at t = 10, 20
    if (t + 1) % 10:
      assert (mask[:, t] <= mask[:, t + 1]).all()
    else:
      assert mask[:, t + 1].sum() < mask[:, t].sum()


@pytest.mark.parametrize('bits,outlier_bits,trigger,outliers', [
    (4, 8, 'sample', 'int'), (8, 8, 'sample', 'int'), (4, 8, 'batch', 'int'),
    (4, 8, 'sample', 'none')])
def test_asymmetric_grid_matches_canonical(bits, outlier_bits, trigger, outliers):
  """Δ's quantizer (asymmetric, k = 4): codes, zero points, scales and masks equal XLA's.
  8-bit asymmetric codes (0..255) come back as int32, like the canonical quantizer's."""
  rng = np.random.default_rng(bits + outlier_bits)
  x = _activations(rng, 2, 23, 40) - 3.0           # pre-softplus Δ is mostly negative
  qmax = 2 ** bits - 1
  scale = jnp.asarray(rng.uniform(6.0, 9.0, 23) / qmax, jnp.float32)
  zero = jnp.asarray(rng.integers(qmax // 2, qmax, 23), jnp.int32)
  spec = ActQuantParams(bits=bits, symmetric=False, k=4.0, outlier_bits=outlier_bits,
                        trigger=trigger, outliers=outliers)
  want = api.act_quant(x, scale, spec, zero, implementation='xla')
  got = _kernel(x, scale, spec, zero)
  for field in FIELDS + ('inlier_zero_point', 'outlier_zero_point'):
    g, w = getattr(got, field), getattr(want, field)
    if w is None:
      assert g is None, field
      continue
    assert g.shape == w.shape and g.dtype == w.dtype, (field, g.shape, g.dtype, w.shape, w.dtype)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=field)
  if outliers == 'int':
    assert bool(jnp.any(want.outlier_mask))
  np.testing.assert_array_equal(np.asarray(dequantize(got)),
                                np.asarray(dequantize(want)))


def test_batch_trigger_matches_canonical_and_differs_from_sample():
  # Sample 0 has a huge outlier (it triggers); sample 1 only moderate peaks that never trigger
  # on their own, so only the batch-global trigger flags them.
  rng = np.random.default_rng(5)
  x = 0.3 * rng.standard_normal((2, 12, 48)).astype(np.float32)
  x[0, :, 7] = 20.0
  x[1, :, 11] = 2.0
  scale = jnp.full((12,), 3.0 / 7, jnp.float32)
  x = jnp.asarray(x)
  batch = ActQuantParams(bits=4, trigger='batch')
  got, want = _both(x, scale, batch)
  _assert_same(got, want)
  per_sample = _kernel(x, scale, ActQuantParams(bits=4, trigger='sample'))
  assert bool(got.outlier_mask[1, :, 11].all())
  assert not bool(per_sample.outlier_mask[1].any())


def test_no_outliers_spec_matches_canonical():
  rng = np.random.default_rng(6)
  x = _activations(rng, 2, 13, 32)
  scale = jnp.full((13,), 0.5, jnp.float32)
  got, want = _both(x, scale, ActQuantParams(bits=4, outliers='none'))
  _assert_same(got, want)
  assert not bool(got.outlier_mask.any())


def test_sequence_shorter_than_window_and_bf16_input():
  rng = np.random.default_rng(7)
  x = _activations(rng, 3, 7, 24, dtype=jnp.bfloat16)
  scale = jnp.asarray(rng.uniform(0.2, 0.6, 7), jnp.float32)
  got, want = _both(x, scale, ActQuantParams(bits=4, std_ddof=0, k=2.5))
  _assert_same(got, want)


def test_rounding_ties_go_to_even():
  # x = (j + 1/2) * S exactly (S a power of two): jnp.round sends the ties to the even code.
  j = np.arange(-6, 6, dtype=np.float32)
  x = jnp.asarray(((j + 0.5) * 0.25).reshape(1, 1, -1))
  spec = ActQuantParams(bits=4, outliers='none')
  got = api.act_quant(x, jnp.asarray([0.25], jnp.float32), spec, implementation='triton',
                      interpret=True)
  np.testing.assert_array_equal(np.asarray(got.inlier_q[0, 0]), np.round(j + 0.5))


def test_codes_feed_the_mixed_gemm():
  """act_quant -> mixed_gemm (int4 codes one per byte: as
  `int_linear.prepare_operands` passes them) equals the float matmul of the dequantized input."""
  rng = np.random.default_rng(8)
  b, l, c, n = 2, 12, 64, 32
  x = _activations(rng, b, l, c)
  scale = jnp.full((l,), 2.5 / 7, jnp.float32)
  q = _kernel(x, scale, ActQuantParams(bits=4))
  w_codes = jnp.asarray(rng.integers(-7, 8, (c, n)), jnp.int8)
  w_scale = jnp.asarray(rng.uniform(0.01, 0.02, n), jnp.float32)
  a_scale = jnp.broadcast_to(q.inlier_scale, (b, l))
  y = gemm_api.mixed_gemm(q.inlier_q, a_scale, int4.pack_int4(w_codes.T, -1), w_scale,
                          q.outlier_q, q.outlier_scale, implementation='triton',
                          interpret=True, out_dtype=jnp.float32)
  x_hat = dequantize(q)
  want = jnp.einsum('blc,cn->bln', x_hat, w_codes.astype(jnp.float32) * w_scale,
                    precision='highest')
  np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-5, atol=1e-4)


def test_unsupported_specs_and_bad_inputs_are_rejected_clearly():
  x = jnp.zeros((1, 4, 8), jnp.float32)
  s = jnp.ones((4,), jnp.float32)
  for spec, reason in ((ActQuantParams(trigger='official'), 'official'),
                       (ActQuantParams(outliers='float'), 'float outliers')):
    with pytest.raises(ValueError, match=f"implementation='triton' cannot .*{reason}.*'xla'"):
      api.act_quant(x, s, spec, implementation='triton', interpret=True)
    assert api.DISPATCH.choose(None, spec, 8) == 'xla'
    assert api.DISPATCH.choose(('triton', 'xla'), spec, 8) == 'xla'
  with pytest.raises(ValueError, match='one static step per time step'):
    api.act_quant(x, jnp.ones((5,)), ActQuantParams())
  with pytest.raises(ValueError, match='float \\(B, L, C\\)'):
    api.act_quant(jnp.zeros((4, 8)), s, ActQuantParams())
  with pytest.raises(TypeError, match='ActQuantParams'):
    api.act_quant(x, s, {'bits': 4})


@pytest.mark.parametrize('implementation', api.IMPLEMENTATIONS)
def test_zero_point_must_match_the_grid_and_the_sequence(implementation):
  """Checked before the implementation is chosen: the kernel would read a short zero point
  past its end, XLA would fail with an opaque broadcasting error."""
  x = jnp.zeros((1, 5, 8), jnp.float32)
  s = jnp.ones((5,), jnp.float32)
  kw = dict(implementation=implementation, interpret=True)
  asym = ActQuantParams(symmetric=False)
  with pytest.raises(ValueError, match=r'asymmetric grid needs its zero points \(5,\)'):
    api.act_quant(x, s, asym, **kw)
  for length in (3, 7):
    with pytest.raises(ValueError, match=r'zero_point must have shape \(5,\).*'
                       f'got \\({length},\\).*calibrate_inlier_scale'):
      api.act_quant(x, s, asym, jnp.zeros((length,), jnp.int32), **kw)
  with pytest.raises(ValueError, match='symmetric grid has no zero points.*zero_point=None'):
    api.act_quant(x, s, ActQuantParams(), jnp.zeros((5,), jnp.int32), **kw)


def test_default_implementation_keeps_the_batch_trigger_on_xla(monkeypatch):
  """On GPU the kernel is the default except for int outliers with trigger='batch' (4-5x
  slower than XLA, BENCHMARKS.md); off-GPU the default is always XLA."""
  specs = {'sample': ActQuantParams(trigger='sample'), 'batch': ActQuantParams(trigger='batch'),
           'batch_no_outliers': ActQuantParams(trigger='batch', outliers='none'),
           'official': ActQuantParams(trigger='official')}
  want_gpu = {'sample': 'triton', 'batch': 'xla', 'batch_no_outliers': 'triton',
              'official': 'xla'}
  for backend, want in (('cpu', dict.fromkeys(specs, 'xla')), ('gpu', want_gpu)):
    monkeypatch.setattr(jax, 'default_backend', lambda b=backend: b)
    assert {k: api.DISPATCH.choose(None, v, 64) for k, v in specs.items()} == want, backend


def test_block_config_validation():
  with pytest.raises(ValueError, match='power of two'):
    config.ActQuantBlockConfig(block_c=100)
  with pytest.raises(ValueError, match='num_warps'):
    config.ActQuantBlockConfig(num_warps=5)
  with pytest.raises(ValueError, match='every channel of a time step'):
    config.ActQuantBlockConfig(block_c=64).resolve(100)
  with pytest.raises(ValueError, match='block_b'):
    config.ActQuantBlockConfig(block_b=3)
  with pytest.raises(ValueError, match='unroll'):
    config.ActQuantBlockConfig(unroll=1)
  x = jnp.zeros((64, 197, 384), jnp.bfloat16)
  args = lambda cfg: api._kernel_args(ActQuantParams(bits=4), x, cfg, False)  # pylint: disable=protected-access
  # the window is a loop unless asked: unrolled kernels compile ~50x longer (config.py)
  assert args(None)['unroll'] is False
  assert args(config.ActQuantBlockConfig(unroll=True))['unroll'] is True
  # Vim's widths 3 x 2^k are three exact chunks; other widths one padded tile (batch 64 and
  # Vim's 20 refresh windows: 1280 programs, the measured warps)
  assert config.ActQuantBlockConfig().resolve(1536, 64, 20) == (512, 1, 4, 3)
  assert config.ActQuantBlockConfig().resolve(192, 64, 20) == (64, 2, 2, 3)
  assert config.ActQuantBlockConfig().resolve(100, 64, 20) == (128, 4, 2, 1)
  assert config.ActQuantBlockConfig(block_c=2048).resolve(1536, 64, 20) == (2048, 1, 4, 1)
  # several samples per program up to TILE_ELEMENTS lanes, never more than the batch
  assert config.ActQuantBlockConfig().resolve(768, 64, 20) == (256, 1, 2, 3)
  assert config.ActQuantBlockConfig().resolve(48, 3) == (16, 4, 2, 3)
  assert config.ActQuantBlockConfig(block_b=2, num_warps=1).resolve(768, 64) == (256, 2, 1, 3)
  # a small grid (batch 1: 20 programs) gets the warps that keep 4 lanes per thread
  assert config.ActQuantBlockConfig().resolve(1536, 1, 20) == (512, 1, 8, 3)
  assert config.ActQuantBlockConfig().resolve(768, 1, 20) == (256, 1, 4, 3)
  assert config.ActQuantBlockConfig().resolve(192, 1, 20) == (64, 1, 2, 3)
  assert config.ActQuantBlockConfig(num_warps=2).resolve(1536, 1, 20)[2] == 2
  assert config.default_warps(1536, config.SMALL_GRID_PROGRAMS + 1) == 4
  assert config.default_warps(8192, 1) == 16
  assert args(None)['num_warps'] == 2  # 384 lanes at batch 64: the measured default


@pytest.mark.parametrize('symmetric,trigger', [
    (True, 'sample'), (False, 'sample'), (True, 'batch'), (False, 'batch')])
def test_row_in_three_chunks_matches_canonical(symmetric, trigger):
  """C = 96 = 3 x 32 runs as three exact chunks per row (Vim's widths): statistics across the
  chunks, masks, codes, scales and zero points equal the canonical quantizer."""
  assert config.ActQuantBlockConfig().resolve(96, 3)[3] == 3
  rng = np.random.default_rng(11)
  x = _activations(rng, 3, 23, 96) - (0.0 if symmetric else 3.0)
  bits = 4
  qmax = 2 ** (bits - 1) - 1 if symmetric else 2 ** bits - 1
  scale = jnp.asarray(rng.uniform(2.0, 4.0, 23) / qmax, jnp.float32)
  zero = None if symmetric else jnp.asarray(rng.integers(qmax // 2, qmax, 23), jnp.int32)
  spec = ActQuantParams(bits=bits, outlier_bits=8, trigger=trigger, symmetric=symmetric,
                        k=3.0 if symmetric else 4.0)
  want = api.act_quant(x, scale, spec, zero, implementation='xla')
  got = _kernel(x, scale, spec, zero)
  for field in FIELDS + ('inlier_zero_point', 'outlier_zero_point'):
    g, w = getattr(got, field), getattr(want, field)
    if w is None:
      assert g is None, field
      continue
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=field)
  assert np.asarray(want.outlier_mask).any()


@pytest.mark.parametrize('symmetric', [True, False])
def test_several_samples_per_program_match_canonical(symmetric):
  """block_b = 2 over a batch of 3: a program's rows keep their own statistics and masks, and
  the missing fourth row of the last program changes nothing."""
  rng = np.random.default_rng(5)
  x = _activations(rng, 3, 23, 40) - (0.0 if symmetric else 3.0)
  scale = jnp.asarray(rng.uniform(2.0, 4.0, 23) / 7, jnp.float32)
  zero = None if symmetric else jnp.asarray(rng.integers(7, 15, 23), jnp.int32)
  spec = ActQuantParams(bits=4, symmetric=symmetric, outlier_bits=8)
  want = api.act_quant(x, scale, spec, zero, implementation='xla')
  got = _kernel(x, scale, spec, zero, block_config=config.ActQuantBlockConfig(block_b=2))
  for field in FIELDS + ('outlier_zero_point',):
    g, w = getattr(got, field), getattr(want, field)
    if w is None:
      assert g is None
      continue
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=field)
  assert np.asarray(want.outlier_mask).any()


@pytest.mark.parametrize('symmetric,n_refresh', [(True, 10), (False, 4)])
def test_window_walked_as_a_loop_matches_the_unrolled_walk(symmetric, n_refresh):
  """unroll=True (the GPU's walk for short windows of narrow tiles) and the loop walk (the
  interpreter's, and the GPU's otherwise) give the canonical codes, and the same dequantized
  values; L = 23 leaves a short last window."""
  rng = np.random.default_rng(11)
  x = _activations(rng, 2, 23, 40) - (0.0 if symmetric else 3.0)
  scale = jnp.asarray(rng.uniform(2.0, 4.0, 23) / 7, jnp.float32)
  zero = None if symmetric else jnp.asarray(rng.integers(7, 15, 23), jnp.int32)
  spec = ActQuantParams(bits=4, symmetric=symmetric, outlier_bits=8, n_refresh=n_refresh)
  want = api.act_quant(x, scale, spec, zero, implementation='xla')
  for unroll in (False, True):
    got = _kernel(x, scale, spec, zero, block_config=config.ActQuantBlockConfig(unroll=unroll))
    for field in FIELDS + ('outlier_zero_point',):
      g, w = getattr(got, field), getattr(want, field)
      if w is None:
        assert g is None
        continue
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=f'{field} {unroll}')
    np.testing.assert_array_equal(
        np.asarray(_kernel(x, scale, spec, zero, fn=api.act_quant_dequantized,
                           block_config=config.ActQuantBlockConfig(unroll=unroll))),
        np.asarray(dequantize(want)), err_msg=f'dequantized {unroll}')
  assert np.asarray(want.outlier_mask).any()


@pytest.mark.parametrize('trigger,c', [('sample', 96), ('batch', 96), ('sample', 64)])
def test_int4_codes_match_canonical_in_both_walks(trigger, c):
  """int4 codes (a row in one or three chunks, both triggers, both walks) equal the canonical
  quantizer's."""
  rng = np.random.default_rng(c)
  x = _activations(rng, 3, 23, c)
  scale = jnp.asarray(rng.uniform(2.0, 4.0, 23) / 7, jnp.float32)
  spec = ActQuantParams(bits=4, outlier_bits=8, trigger=trigger)
  want = api.act_quant(x, scale, spec, implementation='xla')
  for unroll in (False, True):
    block = config.ActQuantBlockConfig(unroll=unroll)
    _assert_same(_kernel(x, scale, spec, block_config=block), want)
  assert np.asarray(want.outlier_mask).any()


@pytest.mark.parametrize('trigger,symmetric,n_chunks,dequantized,unroll', [
    ('sample', True, 1, False, False), ('batch', True, 1, False, False),
    ('sample', False, 1, False, True), ('sample', True, 3, False, True),
    ('batch', False, 3, False, False), ('sample', False, 3, True, True)])
def test_kernel_lowers_to_triton_for_h100(trigger, symmetric, n_chunks, dequantized, unroll):
  """Lowers (no compile) for an abstract H100: every op must have a Triton lowering rule."""
  from kernels_pallas.act_quant import pallas_triton  # pylint: disable=g-import-not-at-top
  b, l = 64, 197
  c = 1536
  zero = None if symmetric else jax.ShapeDtypeStruct((l,), jnp.int32)
  code_range = (-7, 7, -127, 127) if symmetric else (0, 15, 0, 255)
  common = dict(code_range=code_range, k=3.0, n_refresh=10, std_ddof=1, detect=True,
                block_c=2048 // (4 if n_chunks == 3 else 1), block_b=2, num_warps=8,
                n_chunks=n_chunks, unroll=unroll)
  args = (jax.ShapeDtypeStruct((b, l, c), jnp.bfloat16), jax.ShapeDtypeStruct((l,), jnp.float32),
          zero)
  with abstract_h100():
    if dequantized:
      traced = pallas_triton.act_quant_dequantized.trace(*args, out_dtype=jnp.dtype(jnp.bfloat16),
                                                         **common)
    else:
      traced = pallas_triton.act_quant.trace(*args, trigger=trigger, **common)
    lowered = traced.lower(lowering_platforms=('cuda',))
  assert '__gpu$xla.gpu.triton' in lowered.as_text()


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a CUDA GPU')
@pytest.mark.parametrize('trigger,unroll,channels', [
    ('sample', False, 768), ('batch', False, 768), ('sample', False, 1536)])
# (no unrolled case: it compiles for ~1 min on a card, bench/triton_compile_time.py; the
# interpreter checks it bit for bit against the loop)
def test_gpu_kernel_matches_canonical_at_vim_shape(trigger, unroll, channels):
  # On the GPU the reductions run in another order than XLA's, so a value within an ulp of
  # the mu + k sigma threshold may flip; allow a vanishing fraction of differing codes.
  rng = np.random.default_rng(9)
  x = _activations(rng, 64, 197, channels)
  scale = jnp.asarray(rng.uniform(0.3, 0.6, 197), jnp.float32)
  spec = ActQuantParams(bits=4, trigger=trigger)
  want = api.act_quant(x, scale, spec, implementation='xla')
  got = api.act_quant(x, scale, spec, implementation='triton',
                      block_config=config.ActQuantBlockConfig(unroll=unroll))
  for field in FIELDS:
    g, w = np.asarray(getattr(got, field)), np.asarray(getattr(want, field))
    frac = np.mean(g != w)
    print(f'{trigger} C={channels} unroll={unroll} {field}: '
          f'mismatch fraction {frac:.2e}')
    assert frac < 1e-5, field


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a CUDA GPU')
@pytest.mark.parametrize('channels', [768, 384])
def test_gpu_asymmetric_kernel_matches_canonical_at_vim_shape(channels):
  """Δ's quantizer (asymmetric 4-bit, k = 4, 8-bit outliers) at Vim-S / Vim-T d_inner shapes."""
  rng = np.random.default_rng(10)
  x = _activations(rng, 64, 197, channels) - 3.0
  scale = jnp.asarray(rng.uniform(6.0, 9.0, 197) / 15, jnp.float32)
  zero = jnp.asarray(rng.integers(7, 15, 197), jnp.int32)
  spec = ActQuantParams(bits=4, symmetric=False, k=4.0)
  want = api.act_quant(x, scale, spec, zero, implementation='xla')
  got = api.act_quant(x, scale, spec, zero, implementation='triton')
  for field in FIELDS + ('outlier_zero_point',):
    g, w = np.asarray(getattr(got, field)), np.asarray(getattr(want, field))
    if field == 'outlier_scale':
      # The kernel's step is the IEEE (hi - lo) * fl(1/255) (bit-equal to XLA on the CPU);
      # XLA's GPU reference lands 1-2 ulp below it (H100, 2026-11-27). Codes and zero
      # points must still match exactly.
      np.testing.assert_allclose(g, w, rtol=3e-7, atol=0)
      continue
    frac = np.mean(g != w)
    print(f'asymmetric C={channels} {field}: mismatch fraction {frac:.2e}')
    assert frac < 1e-5, field


@pytest.mark.parametrize('symmetric,outliers,chunks_c', [
    (True, 'int', 40), (False, 'int', 40), (True, 'none', 96), (False, 'int', 96)])
def test_dequantized_output_equals_dequantize_of_codes(symmetric, outliers, chunks_c):
  """The one-pass dequantized output equals reference.dequantize of the canonical codes, cast
  to bf16 or kept fp32, bit for bit (one chunk and three chunks per row)."""
  rng = np.random.default_rng(5)
  x = _activations(rng, 3, 23, chunks_c) - (0.0 if symmetric else 3.0)
  qmax = 7 if symmetric else 15
  scale = jnp.asarray(rng.uniform(2.0, 4.0, 23) / qmax, jnp.float32)
  zero = None if symmetric else jnp.asarray(rng.integers(qmax // 2, qmax, 23), jnp.int32)
  spec = ActQuantParams(bits=4, outlier_bits=8, symmetric=symmetric, outliers=outliers,
                        k=3.0 if symmetric else 4.0)
  for dtype in (jnp.float32, jnp.bfloat16):
    want = dequantize(api.act_quant(x, scale, spec, zero, implementation='xla')).astype(dtype)
    got = _kernel(x, scale, spec, zero, fn=api.act_quant_dequantized, out_dtype=dtype)
    assert got.dtype == want.dtype and got.shape == x.shape
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    xla = api.act_quant_dequantized(x, scale, spec, zero, out_dtype=dtype, implementation='xla')
    np.testing.assert_array_equal(np.asarray(xla, np.float32), np.asarray(want, np.float32))


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a CUDA GPU')
@pytest.mark.parametrize('symmetric,channels', [(True, 1536), (False, 1536), (True, 16),
                                               (False, 384)])
def test_gpu_dequantized_matches_canonical_at_vim_b_shape(symmetric, channels):
  """One-pass dequantized output at Vim-B d_inner (C = 1536: three chunks), at B/C's N = 16
  and Vim-T's Δ against the XLA codes + dequantize; a
  vanishing fraction may differ (threshold ties, reduction order, the asymmetric outlier
  step's ulps: see the asymmetric test above)."""
  rng = np.random.default_rng(12)
  x = _activations(rng, 64, 197, channels, np.float32) - (0.0 if symmetric else 3.0)
  x = x.astype(jnp.bfloat16)
  qmax = 7 if symmetric else 15
  scale = jnp.asarray(rng.uniform(2.0, 4.0, 197) / qmax, jnp.float32)
  zero = None if symmetric else jnp.asarray(rng.integers(7, 15, 197), jnp.int32)
  spec = ActQuantParams(bits=4, symmetric=symmetric, k=3.0 if symmetric else 4.0)
  want = np.asarray(api.act_quant_dequantized(x, scale, spec, zero, implementation='xla'),
                    np.float32)
  got = np.asarray(api.act_quant_dequantized(x, scale, spec, zero, implementation='triton'),
                   np.float32)
  # A lane may land one outlier step away: the asymmetric outlier step of XLA's GPU fusion is
  # 1-2 ulp below the kernel's IEEE one (test above), which can move a code across a rounding
  # tie; the rest is the bf16 rounding of the output.
  step = np.asarray(api.act_quant(x, scale, spec, zero, implementation='xla').outlier_scale)
  tol = 1.01 * step[..., None] + 2.0 ** -7 * np.abs(want)
  frac, far = np.mean(got != want), np.mean(np.abs(got - want) > tol)
  print(f'dequantized symmetric={symmetric} C={channels}: mismatch fraction {frac:.2e}, beyond one '
        f'outlier step {far:.2e}')
  # Lanes within one step are ties, not errors: an H200 (session 23) gave 2.8e-6 / 4.3e-5 /
  # 9.9e-6 / 1.03e-4 for the four cases, none beyond one step; the bound on them only catches a
  # systematic difference.
  assert frac < 5e-4 and far < 1e-5


def _x_proj_sites(rng, length, widths=(48, 16, 16)):
  """Vim's x_proj sites: dt's codes (4-bit), B's values (4-bit) and an asymmetric 8-bit site
  dequantized to fp32 (Δ's grid kind), each with its own steps."""
  scale = lambda lo, hi: jnp.asarray(rng.uniform(lo, hi, length), jnp.float32)
  return (api.SegmentSite(widths[0], scale(0.3, 0.6), ActQuantParams(bits=4)),
          api.SegmentSite(widths[1], scale(0.3, 0.6), ActQuantParams(bits=4, k=2.0),
                          dequantize_to=jnp.bfloat16),
          api.SegmentSite(widths[2], scale(0.05, 0.1), ActQuantParams(symmetric=False, k=2.5),
                          jnp.asarray(rng.integers(100, 140, length), jnp.int32),
                          dequantize_to=jnp.float32))


def _assert_segments_equal(got, want, tolerance=0.0):
  for i, (g, w) in enumerate(zip(got, want, strict=True)):
    fields = getattr(w, '_fields', None)
    pairs = ([(f, getattr(g, f), getattr(w, f)) for f in fields] if fields
             else [('values', g, w)])
    for field, a, b in pairs:
      if a is None or b is None:
        assert a is None and b is None, (i, field)
        continue
      assert a.shape == b.shape and a.dtype == b.dtype, (i, field)
      frac = np.mean(np.asarray(a) != np.asarray(b))
      print(f'segment {i} {field}: mismatch fraction {frac:.2e}')
      assert frac <= tolerance, (i, field)


def test_segments_in_one_launch_equal_each_segment_alone():
  """act_quant_segments: one interpreted launch gives each slice's own codes (dt) and values
  (B, an asymmetric site), bit for bit; slices whose tiles would reach past x go one by one."""
  rng = np.random.default_rng(11)
  x = _activations(rng, 3, 23, 80, np.float32).astype(jnp.bfloat16)
  sites = _x_proj_sites(rng, 23)
  run = lambda x, sites: api.act_quant_segments(x, sites, implementation='triton',
                                                interpret=True)
  got = jax.jit(lambda x: run(x, sites), compiler_options=CPU_FAST_COMPILE)(x)
  want = api.act_quant_segments(x, sites, implementation='xla')
  assert got[0].outlier_mask is None and want[0].outlier_mask is None
  assert np.asarray(want[0].outlier_q).any()  # outliers were found and coded
  _assert_segments_equal(got, want)
  launches = str(jax.make_jaxpr(lambda x: run(x, sites))(x))
  assert launches.count('pallas_call[') == 1 and 'act_quant_segments' in launches
  # C's 16-lane tile at channel 66 of 72 would reach past x: each slice alone, same values
  narrow = _x_proj_sites(rng, 23, (48, 18, 6))
  short = x[:, :, :72]
  alone = str(jax.make_jaxpr(lambda x: run(x, narrow))(short))
  assert 'act_quant_segments' not in alone
  _assert_segments_equal(run(short, narrow), api.act_quant_segments(short, narrow,
                                                                    implementation='xla'))
  with pytest.raises(ValueError, match='do not add up to the 64 channels'):
    api.act_quant_segments(x[:, :, :64], sites)


def test_segments_kernel_lowers_to_triton_for_h100():
  from kernels_pallas.act_quant import pallas_triton  # pylint: disable=g-import-not-at-top
  b, l = 64, 197
  rng = np.random.default_rng(12)
  sites = _x_proj_sites(rng, l)
  x = jax.ShapeDtypeStruct((b, l, 80), jnp.bfloat16)
  segments, num_warps = api._segments(x, sites, None)  # pylint: disable=protected-access
  with abstract_h100():
    lowered = pallas_triton.act_quant_segments.trace(
        x, tuple(s.inlier_scale for s in sites), tuple(s.zero_point for s in sites),
        segments=segments, num_warps=num_warps).lower(lowering_platforms=('cuda',))
  assert '__gpu$xla.gpu.triton' in lowered.as_text()


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a CUDA GPU')
def test_gpu_segments_match_canonical_at_vim_b_x_proj_shape():
  """Vim-B's x_proj output at batch 64 (dt_rank 48 + B 16 + C 16): one launch against each
  slice's XLA reference run on the CPU, the canonical arithmetic. XLA on the GPU contracts the
  fp32 dequantization ((q - z) s + (q_o - z_o) s_o) into FMAs, one ulp off in 2.6 % of the
  asymmetric site's fp32 values (an H200, session 36, where the kernel matched the CPU's bit for
  bit). Threshold ties flip a vanishing fraction of lanes, as in the dequantized test above (its
  bound): an H100 (session 29) gave 2.0e-5 of B's values (4 of 201,728 lanes)."""
  rng = np.random.default_rng(13)
  x = _activations(rng, 64, 197, 80).astype(jnp.bfloat16)
  sites = _x_proj_sites(rng, 197)
  got = api.act_quant_segments(x, sites, implementation='triton')
  cpu = jax.devices('cpu')[0]
  on_cpu = lambda tree: jax.tree.map(
      lambda a: jax.device_put(a, cpu) if isinstance(a, jax.Array) else a, tree)
  want = api.act_quant_segments(on_cpu(x), on_cpu(sites), implementation='xla')
  _assert_segments_equal(got, want, tolerance=5e-4)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a CUDA GPU')
def test_gpu_reciprocal_and_quotient_without_the_slow_path_are_ieee():
  """`_reciprocal_rn` and `_divide_rn` (div.rn's fast path without its FCHK test and slow-path
  call) equal IEEE 1/v and a/v bit for bit over the ranges the kernel uses them on: steps v
  from MIN_SCALE / 127 (the smallest outlier step) up, random mantissas across every exponent
  and the powers of two with their neighbours; quotients a / v of an outlier range's end by
  its step (0 <= a <= 255 v, and a = 0)."""
  from jax.experimental import pallas as pl  # pylint: disable=g-import-not-at-top
  from kernels_pallas.act_quant import pallas_triton  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(36)
  exponents = rng.uniform(np.log2(config.MIN_SCALE / 127), 100.0, 1 << 20)
  v = np.exp2(exponents).astype(np.float32)
  twos = np.exp2(np.arange(-34, 101, dtype=np.float32))
  v = np.concatenate([v, twos, np.nextafter(twos, 0), np.nextafter(twos, np.inf)])
  v = np.pad(v, (0, -v.size % 1024), constant_values=1.0).reshape(-1, 1024)
  a = (v * rng.uniform(0.0, 255.0, v.shape)).astype(np.float32)
  a[:, ::7] = 0.0

  def kernel(a_ref, v_ref, inv_ref, quotient_ref):
    inv_ref[...] = pallas_triton._reciprocal_rn(v_ref[...], False)  # pylint: disable=protected-access
    quotient_ref[...] = pallas_triton._divide_rn(a_ref[...], v_ref[...], False)  # pylint: disable=protected-access

  block = pl.BlockSpec((1, 1024), lambda i: (i, 0))
  out = jax.ShapeDtypeStruct(v.shape, jnp.float32)
  inv, quotient = pl.pallas_call(kernel, out_shape=(out, out), grid=(v.shape[0],),
                                 in_specs=[block, block], out_specs=(block, block))(
                                     jnp.asarray(a), jnp.asarray(v))
  bits = lambda x: np.asarray(x).view(np.uint32)
  np.testing.assert_array_equal(bits(inv), bits(np.float32(1.0) / v))
  np.testing.assert_array_equal(bits(quotient), bits(a / v))
