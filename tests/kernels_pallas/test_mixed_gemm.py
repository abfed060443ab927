"""Mixed int4/int8 GEMM: exact int32 sums and dequantized output, kernel vs XLA.

The Pallas kernel runs in interpret mode on CPU; `test_kernel_lowers_to_triton_for_h100` also
lowers it for an (abstract) H100, which catches Triton lowering errors without a GPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import int4
from kernels_pallas.mixed_gemm import api, config, reference
from kernels_pallas.mixed_gemm import bench as mixed_gemm_bench
from tests.kernels_pallas.abstract_gpu import abstract_h100

# (weight_bits, code_bits): activation codes always travel one per byte; code_bits sets their
# range (int4 codes in int8, as act_quant writes them, or full int8 codes).
COMBOS = [(4, 4), (4, 8), (8, 8), (8, 4)]


def _kmajor(w, weight_bits):
  """A (K, N) weight as the API takes it: (N, K), int4 packed along K."""
  w = jnp.asarray(w).T
  return int4.pack_int4(w, axis=-1) if weight_bits == 4 else w


def _operands(rng, m, k, n, weight_bits, code_bits, outlier_frac=0.05):
  """Random int codes in the quantizers' ranges, the weight as the API takes it (K-major, int4
  packed), and int64 numpy oracles."""
  w_max = 7 if weight_bits == 4 else 127
  x_max = 7 if code_bits == 4 else 127
  w = rng.integers(-w_max, w_max + 1, (k, n)).astype(np.int8)
  xin = rng.integers(-x_max, x_max + 1, (m, k)).astype(np.int8)
  xout = (rng.integers(-127, 128, (m, k)) * (rng.random((m, k)) < outlier_frac)).astype(np.int8)
  w_arg = _kmajor(w, weight_bits)
  oracle_in = xin.astype(np.int64) @ w.astype(np.int64)
  oracle_out = xout.astype(np.int64) @ w.astype(np.int64)
  return jnp.asarray(xin), w_arg, jnp.asarray(xout), oracle_in, oracle_out


@pytest.mark.parametrize('weight_bits,code_bits', COMBOS)
def test_kernel_sums_are_exact(weight_bits, code_bits):
  # M, N not multiples of the tile (masked tails); K = 192 takes three 64-wide K steps.
  rng = np.random.default_rng(weight_bits * 10 + code_bits)
  m, k, n = 70, 192, 48
  x, w, xout, oracle_in, oracle_out = _operands(rng, m, k, n, weight_bits, code_bits)
  for impl in ('xla', 'triton'):
    acc_in, acc_out = api.mixed_gemm_accumulators(
        x, w, xout, weight_bits=weight_bits, implementation=impl,
        interpret=True)
    assert acc_in.dtype == jnp.int32 and acc_out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(acc_in), oracle_in, err_msg=impl)
    np.testing.assert_array_equal(np.asarray(acc_out), oracle_out, err_msg=impl)


@pytest.mark.parametrize('k,weight_bits', [(100, 4), (48, 8)])
def test_kernel_masks_a_k_that_no_block_divides(k, weight_bits):
  # K = 100 (int4) and Vim-B's dt_proj K = 48 (int8) end in a partial 64-wide block, masked in
  # the kernel (no pad in XLA): the lanes past K must add nothing, however the memory after
  # them is filled (here: the next row's codes).
  rng = np.random.default_rng(7)
  m, n = 33, 40
  x, w, xout, oracle_in, oracle_out = _operands(rng, m, k, n, weight_bits, 8)
  acc_in, acc_out = api.mixed_gemm_accumulators(x, w, xout, weight_bits=weight_bits,
                                                implementation='triton', interpret=True)
  np.testing.assert_array_equal(np.asarray(acc_in), oracle_in)
  np.testing.assert_array_equal(np.asarray(acc_out), oracle_out)


def test_bias_is_added_in_the_output_dtype_as_a_separate_add_would():
  # The fused bias must give the bits of `y_bf16 + bias.astype(bf16)` after an unbiased GEMM
  # (how the model's Linear added it before the fusion), not of one fp32 add rounded once.
  rng = np.random.default_rng(3)
  m, k, n = 64, 48, 96
  x, w, xout, _, _ = _operands(rng, m, k, n, 8, 8)
  a = jnp.asarray(rng.uniform(0.01, 0.1, (m,)), jnp.float32)
  o = jnp.asarray(rng.uniform(0.1, 1.0, (m,)), jnp.float32)
  ws = jnp.asarray(rng.uniform(0.001, 0.01, (n,)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(n,)) * 3, jnp.float32)
  kw = dict(weight_bits=8)
  for impl in ('xla', 'triton'):
    fused = api.mixed_gemm(x, a, w, ws, xout, o, bias, implementation=impl, interpret=True, **kw)
    apart = api.mixed_gemm(x, a, w, ws, xout, o, implementation=impl, interpret=True, **kw)
    separate = jax.jit(lambda y, b: y + b.astype(y.dtype))(apart, bias)
    assert fused.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(fused, np.float32), np.asarray(separate, np.float32),
                                  err_msg=impl)
    y32 = api.mixed_gemm(x, a, w, ws, xout, o, implementation=impl, interpret=True,
                         out_dtype=jnp.float32, **kw)
    rounded_once = np.asarray((np.asarray(y32) + np.asarray(bias)).astype(jnp.bfloat16),
                              np.float32)
    assert (np.asarray(fused, np.float32) != rounded_once).any(), 'the data cannot tell them apart'


@pytest.mark.parametrize('weight_bits,code_bits', [(4, 4), (8, 8)])
@pytest.mark.parametrize('with_outliers', [True, False])
def test_dequantized_output_matches_xla(weight_bits, code_bits, with_outliers):
  rng = np.random.default_rng(1)
  b, l, k, n = 2, 37, 128, 96  # tokens given as (B, L): flattened to M = 74 rows
  x, w, xout, oracle_in, oracle_out = _operands(rng, b * l, k, n, weight_bits, code_bits)
  x = x.reshape(b, l, -1)
  xout = xout.reshape(b, l, k) if with_outliers else None
  a_scale = jnp.asarray(rng.uniform(0.01, 0.1, (b, l)), jnp.float32)
  o_scale = jnp.asarray(rng.uniform(0.1, 1.0, (b, l)), jnp.float32) if with_outliers else None
  w_scale = jnp.asarray(rng.uniform(0.001, 0.01, (n,)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(n,)), jnp.float32)
  kw = dict(weight_bits=weight_bits, out_dtype=jnp.float32)
  y_xla = api.mixed_gemm(x, a_scale, w, w_scale, xout, o_scale, bias, implementation='xla', **kw)
  y_pl = api.mixed_gemm(x, a_scale, w, w_scale, xout, o_scale, bias, implementation='triton',
                        interpret=True, **kw)
  assert y_pl.shape == (b, l, n) and y_pl.dtype == jnp.float32
  # float64 oracle of the same formula
  acc = np.asarray(a_scale, np.float64).reshape(-1, 1) * oracle_in
  if with_outliers:
    acc = acc + np.asarray(o_scale, np.float64).reshape(-1, 1) * oracle_out
  oracle = (acc * np.asarray(w_scale, np.float64) + np.asarray(bias, np.float64)).reshape(b, l, n)
  for name, y in (('xla', y_xla), ('triton', y_pl)):
    rel = np.abs(np.asarray(y, np.float64) - oracle).max() / np.abs(oracle).max()
    print(f'{name} W{weight_bits}A{code_bits} outliers={with_outliers}: max rel err {rel:.2e}')
    assert rel < 1e-6, name
  np.testing.assert_allclose(np.asarray(y_pl), np.asarray(y_xla), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize('weight_bits,k,stored_uint8', [(4, 192, False), (4, 102, True),
                                                        (4, 48, False), (4, 12, False),
                                                        (8, 48, False)])
def test_weights_as_stored_sums_and_outputs_equal_the_unpacked_form(weight_bits, k, stored_uint8):
  """`weights_as_stored` (the packed int4 weight read as stored and unpacked in the kernel into
  its two halves of K): the same int32 sums as the oracle, with outliers, through K blocks that
  end mid-way (K = 102: the byte block past K/2 = 51 masked; K = 48 / 12: Vim-B's / Vim-T's
  dt_proj, read as stored by default), and the same
  output bits as the form XLA unpacks, bias included. Checkpoints hold int4 bytes as uint8
  (bit-cast). An int8 weight is read as stored either way."""
  rng = np.random.default_rng(11 + k)
  m, n = 45, 40
  x, w, xout, oracle_in, oracle_out = _operands(rng, m, k, n, weight_bits, 4, 0.2)
  if stored_uint8:
    w = jax.lax.bitcast_convert_type(w, jnp.uint8)
  tile = config.MixedGemmBlockConfig(block_m=16, block_n=16, block_k=64, num_warps=4)
  stored = config.MixedGemmBlockConfig(block_m=16, block_n=16, block_k=64, num_warps=4,
                                       weights_as_stored=True)
  acc_in, acc_out = api.mixed_gemm_accumulators(x, w, xout, weight_bits=weight_bits,
                                                implementation='triton', interpret=True,
                                                block_config=stored)
  np.testing.assert_array_equal(np.asarray(acc_in), oracle_in)
  np.testing.assert_array_equal(np.asarray(acc_out), oracle_out)
  a_scale = jnp.asarray(rng.uniform(0.01, 0.1, (m,)), jnp.float32)
  o_scale = jnp.asarray(rng.uniform(0.1, 1.0, (m,)), jnp.float32)
  w_scale = jnp.asarray(rng.uniform(0.001, 0.01, (n,)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(n,)), jnp.float32)
  y = lambda cfg: np.asarray(api.mixed_gemm(
      x, a_scale, w, w_scale, xout, o_scale, bias, weight_bits=weight_bits,
      implementation='triton', interpret=True, block_config=cfg), np.float32)
  np.testing.assert_array_equal(y(stored), y(tile))


def test_bf16_output():
  rng = np.random.default_rng(2)
  x, w, xout, _, _ = _operands(rng, 40, 64, 32, 4, 4)
  a = jnp.full((40,), 0.05, jnp.float32)
  ws = jnp.full((32,), 0.01, jnp.float32)
  y_xla = api.mixed_gemm(x, a, w, ws, xout, a, implementation='xla')
  y_pl = api.mixed_gemm(x, a, w, ws, xout, a, implementation='triton', interpret=True)
  assert y_pl.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y_pl, np.float32), np.asarray(y_xla, np.float32),
                             rtol=1e-2, atol=1e-3)


def test_bad_operands_are_rejected_clearly():
  x = jnp.zeros((8, 64), jnp.int8)      # K = 64 codes, one per byte
  w = jnp.zeros((16, 32), jnp.int8)     # packed int4, K-major: N = 16, K = 64
  a = jnp.ones((8,), jnp.float32)
  ws = jnp.ones((16,), jnp.float32)
  with pytest.raises(ValueError, match=r'last dim must be 64 \(one code per byte\)'):
    api.mixed_gemm(jnp.zeros((8, 32), jnp.int8), a, w, ws)  # activations are never packed
  with pytest.raises(ValueError, match='a_scale must have the token shape'):
    api.mixed_gemm(x, jnp.ones((9,)), w, ws)
  with pytest.raises(ValueError, match='w_scale must have shape'):
    api.mixed_gemm(x, a, w, jnp.ones((15,)))
  with pytest.raises(ValueError, match='o_scale must have the token shape'):
    api.mixed_gemm(x, a, w, ws, jnp.zeros((8, 64), jnp.int8))
  with pytest.raises(ValueError, match='x_outlier must be int8 codes of shape'):
    api.mixed_gemm(x, a, w, ws, jnp.zeros((8, 32), jnp.int8), a)
  with pytest.raises(TypeError, match='must be int8'):
    api.mixed_gemm(x.astype(jnp.float32), a, w, ws)
  with pytest.raises(ValueError, match='weight_bits'):
    api.mixed_gemm(x, a, w, ws, weight_bits=2)
  with pytest.raises(ValueError, match='unknown implementation'):
    api.mixed_gemm(x, a, w, ws, implementation='cuda')


def test_block_config_validation():
  with pytest.raises(ValueError, match='power of two'):
    config.MixedGemmBlockConfig(block_m=96)
  with pytest.raises(ValueError, match='block_k'):
    config.MixedGemmBlockConfig(block_k=32)
  with pytest.raises(ValueError, match='num_warps'):
    config.MixedGemmBlockConfig(num_warps=3)
  with pytest.raises(ValueError, match='dense_outliers_above'):
    config.MixedGemmBlockConfig(dense_outliers_above=1.5)


@pytest.mark.parametrize('sweep_tiles', [1, 0])
def test_default_tiles_are_the_measured_ones(monkeypatch, sweep_tiles):
  """SWEEP_TILES on (the default): the tile sweep's winners at Vim-B's Linears (H100, session
  29); off: the H200 probe's one tile of session 7. (m, n, k, warps, stages) per shape."""
  monkeypatch.setattr(config, 'SWEEP_TILES', sweep_tiles)
  tile = lambda m, n, k: (lambda c: (c.block_m, c.block_n, c.block_k, c.num_warps,
                                     c.num_stages))(config.default_block_config(m, n, k))
  b64, b1 = 64 * 197, 197
  if sweep_tiles:
    assert tile(b64, 3072, 768) == (64, 128, 128, 4, 3)      # in_proj
    assert tile(b64, 768, 1536) == (64, 128, 128, 4, 3)      # out_proj
    assert tile(b64, 80, 1536) == (64, 64, 128, 4, 3)        # x_proj (unpacked)
    assert tile(b64, 1536, 48) == (64, 64, 128, 4, 3)        # dt_proj
    assert tile(b1, 3072, 768) == (64, 128, 256, 4, 3)
    assert tile(b1, 768, 1536) == (64, 64, 256, 4, 4)
    assert tile(b1, 1536, 48) == (64, 64, 256, 4, 4)
  else:
    assert tile(b64, 3072, 768) == (128, 128, 128, 8, 3)
    assert tile(b1, 3072, 768) == (64, 128, 256, 4, 3)
    assert tile(b64, 192, 192)[2] == 64
  assert tile(5, 3, 40)[:2] == (16, 16)                    # tiny problems shrink the tile
  assert not config.default_block_config(b1, 3072, 768).weights_as_stored  # off by default
  # Narrow int4 weights (x_proj's N = 80, dt_proj's K = 48) are read as stored at any batch,
  # except x_proj above NARROW_N_SMALL_TILE_ABOVE_ROWS rows (a 64 x 64 tile on the unpacked
  # weight, int8 and int4 alike).
  assert config.default_block_config(b1, 80, 1536).weights_as_stored
  for m in (b64, b1):
    assert config.default_block_config(m, 1536, 48).weights_as_stored
    assert not config.default_block_config(m, 80, 1536, weight_bits=8).weights_as_stored
  assert tile(b64, 80, 1536) == tile(16 * 197, 80, 1536) == (64, 64, 128, 4, 3)
  assert config.default_block_config(b64, 80, 1536, weight_bits=8) == config.default_block_config(
      b64, 80, 1536)
  assert not config.default_block_config(b64, 80, 1536).weights_as_stored
  monkeypatch.setattr(config, 'NARROW_N_SMALL_TILE_ABOVE_ROWS', 0)
  assert config.default_block_config(b64, 80, 1536).weights_as_stored   # the older rule
  monkeypatch.setattr(config, 'AS_STORED_NARROWER_THAN', 0)
  assert not config.default_block_config(b64, 80, 1536).weights_as_stored
  monkeypatch.setattr(config, 'WEIGHTS_AS_STORED_UP_TO_ROWS', 512)
  assert config.default_block_config(b1, 3072, 768).weights_as_stored
  assert tile(b1, 3072, 768) == (64, 64, 256, 4, 3)     # narrowed: 128 channels spill
  assert not config.default_block_config(b64, 3072, 768).weights_as_stored
  assert not config.default_block_config(b1, 3072, 768, weight_bits=8).weights_as_stored


def test_tiles_that_exceed_sm90_shared_memory_are_refused_up_front():
  """shared_bytes is what Triton 3.9 allocates for sm_90 (session 24, SASS tool); a tile over
  227 KiB is refused before any compile, naming the fix."""
  assert config.MixedGemmBlockConfig(128, 128, 128, 8, 3).shared_bytes(True) == 144 * 1024
  assert config.MixedGemmBlockConfig(128, 64, 128, 4, 3).shared_bytes(True) == 120 * 1024
  assert config.MixedGemmBlockConfig(128, 128, 128, 8, 3).shared_bytes(False) == 96 * 1024
  for m, n, k in ((64 * 197, 3072, 768), (64 * 197, 768, 1536), (197, 3072, 768), (197, 80, 1536),
                  (64 * 197, 1536, 48)):
    config.default_block_config(m, n, k).check_shared_memory(outliers=True)
  for cfg in mixed_gemm_bench.SWEEP_CONFIGS:
    cfg.check_shared_memory(outliers=True)
  rng = np.random.default_rng(4)
  x, w, xout, _, _ = _operands(rng, 50, 256, 40, 4, 4)
  too_big = config.MixedGemmBlockConfig(128, 128, 256, 8, 3)
  with pytest.raises(ValueError, match='288 KiB of shared memory.*lower num_stages'):
    api.mixed_gemm_accumulators(x, w, xout, implementation='triton', interpret=True,
                                block_config=too_big)
  too_big.check_shared_memory(outliers=False)  # 192 KiB without the outlier codes: fits


def test_custom_block_config_is_used():
  rng = np.random.default_rng(3)
  x, w, xout, oracle_in, _ = _operands(rng, 50, 256, 40, 4, 4)
  cfg = config.MixedGemmBlockConfig(block_m=16, block_n=16, block_k=128, num_warps=4)
  acc_in, _ = api.mixed_gemm_accumulators(x, w, xout, implementation='triton', interpret=True,
                                          block_config=cfg)
  np.testing.assert_array_equal(np.asarray(acc_in), oracle_in)


@pytest.mark.parametrize('weight_bits,k,as_stored', [(4, 384, False), (8, 384, False),
                                                     (8, 48, False), (4, 768, True),
                                                     (4, 48, True)])
def test_kernel_lowers_to_triton_for_h100(weight_bits, k, as_stored):
  """Lowers (no compile) for an abstract H100: every op must have a Triton lowering rule
  (K = 48: the masked last K block, Vim-B's dt_proj with its bias, and the model's per-step
  floored inlier scales, read by the row's step; `as_stored`: the form that reads the packed
  weight as stored, unpacking int4 in the kernel by inline PTX)."""
  from kernels_pallas.mixed_gemm import pallas_triton  # pylint: disable=g-import-not-at-top
  m, n = (197 if as_stored else 64 * 197), 1536
  s = jax.ShapeDtypeStruct
  per_step = dict(a_period=197, a_floor=1e-8) if k == 48 else {}
  args = (s((m, k), jnp.int8), s((per_step.get('a_period', m),), jnp.float32),
          s((n, k // 2 if weight_bits == 4 else k), jnp.int8), s((n,), jnp.float32),
          s((m, k), jnp.int8), s((m,), jnp.float32), s((n,), jnp.float32))
  with abstract_h100():
    lowered = pallas_triton.mixed_gemm.trace(
        *args, k=k, weight_bits=weight_bits, out_dtype=jnp.dtype(jnp.bfloat16),
        cfg=(config.reading_weights_as_stored if as_stored else lambda c: c)(
            config.default_block_config(m, n, k)),
        **per_step).lower(lowering_platforms=('cuda',))
  assert '__gpu$xla.gpu.triton' in lowered.as_text()
  # K-major weights need no transpose; an int4 one is unpacked by XLA (the concatenation of
  # its nibble planes) unless the kernel reads it as stored
  text = lowered.as_text()
  assert 'transpose' not in text
  assert ('concatenate' in text) == (weight_bits == 4 and not as_stored)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a CUDA GPU')
@pytest.mark.parametrize('weight_bits,code_bits', [(4, 4), (8, 8)])
def test_gpu_kernel_exact_at_vim_shape(weight_bits, code_bits):
  rng = np.random.default_rng(4)
  m, k, n = 64 * 197, 384, 1536
  x, w, xout, oracle_in, oracle_out = _operands(rng, m, k, n, weight_bits, code_bits)
  acc_in, acc_out = api.mixed_gemm_accumulators(x, w, xout, weight_bits=weight_bits,
                                                implementation='triton')
  np.testing.assert_array_equal(np.asarray(acc_in), oracle_in)
  np.testing.assert_array_equal(np.asarray(acc_out), oracle_out)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a CUDA GPU')
@pytest.mark.parametrize('m,k,n', [(197, 768, 3072), (197, 48, 1536), (64 * 197, 384, 1536),
                                   (64 * 197, 1536, 80)])
def test_gpu_weights_as_stored_unpacked_by_ptx_are_exact(m, k, n):
  """The packed int4 weight read as stored, its nibbles unpacked by the inline PTX (which only
  runs on a card): exact sums at Vim-B's batch-1 in_proj and dt_proj (K = 48, one masked byte
  block), at a batch-64 width and at batch 64's x_proj (N = 80, read so by default), with
  outliers."""
  rng = np.random.default_rng(m + k)
  x, w, xout, oracle_in, oracle_out = _operands(rng, m, k, n, 4, 4, 0.1)
  cfg = config.reading_weights_as_stored(config.default_block_config(m, n, k))
  acc_in, acc_out = api.mixed_gemm_accumulators(x, w, xout, weight_bits=4,
                                                implementation='triton', block_config=cfg)
  np.testing.assert_array_equal(np.asarray(acc_in), oracle_in)
  np.testing.assert_array_equal(np.asarray(acc_out), oracle_out)


def test_outlier_tiles_lists_each_tiles_flagged_channels_first():
  x = np.zeros((5, 8), np.int8)
  x[0, 6] = 3      # tile 0 (rows 0-1): channels 2 and 6
  x[1, 2] = -1
  x[4, 0] = 7      # tile 2 (row 4, the short last tile): channel 0; tile 1 has none
  index, count = reference.outlier_tiles(jnp.asarray(x), 2)
  np.testing.assert_array_equal(np.asarray(count), [2, 0, 1])
  np.testing.assert_array_equal(np.asarray(index)[0, :2], [2, 6])
  np.testing.assert_array_equal(np.asarray(index)[2, :1], [0])
  assert sorted(np.asarray(index)[1]) == list(range(8))  # a permutation: every channel once


@pytest.mark.parametrize('outlier_frac', [0.0, 1.0, 0.002])
@pytest.mark.parametrize('weight_bits,code_bits', [(4, 4), (8, 8)])
def test_outlier_loop_exact_with_no_all_and_rare_outliers(outlier_frac, weight_bits, code_bits):
  """No outliers (the loop runs zero chunks), every channel flagged (the list is all of K) and
  rare ones (a few chunks per tile), each through the listed and the dense form of the outlier
  product (dense_outliers_above 1: never dense; 0, the default: no lists, always dense; 0.25
  picks per tile): the kernel's sums equal the oracle."""
  rng = np.random.default_rng(7)
  x, w, xout, oracle_in, oracle_out = _operands(rng, 40, 128, 24, weight_bits, code_bits,
                                                outlier_frac)
  for dense_above in (1.0, 0.0, 0.25):
    cfg = config.MixedGemmBlockConfig(block_m=16, block_n=16, block_k=64, num_warps=4,
                                      dense_outliers_above=dense_above)
    acc_in, acc_out = api.mixed_gemm_accumulators(
        x, w, xout, weight_bits=weight_bits, implementation='triton',
        interpret=True, block_config=cfg)
    np.testing.assert_array_equal(np.asarray(acc_in), oracle_in, err_msg=str(dense_above))
    np.testing.assert_array_equal(np.asarray(acc_out), oracle_out, err_msg=str(dense_above))


@pytest.mark.parametrize('x_bits,w_bits,k', [(8, 8, 2 ** 10), (8, 4, 2 ** 14), (4, 4, 2 ** 18)])
def test_int_dot_is_exact_at_the_float_bound_and_integer_beyond(x_bits, w_bits, k):
  """At the extreme codes every sum is as large as it can get: the float32 path (CPU, within
  2^24) must still give the integers; past the bound the int32 dot runs instead."""
  lo_x, lo_w = -2 ** (x_bits - 1), -2 ** (w_bits - 1)
  x = jnp.full((3, k), lo_x, jnp.int8).at[1].set(2 ** (x_bits - 1) - 1)
  w = jnp.full((5, k), lo_w, jnp.int8)   # K-major
  exact = jax.lax.dot(x, w.T, preferred_element_type=jnp.int32)
  for bound_k in (k, 2 * k):   # within the bound (float on CPU), then past it (int32)
    xs, ws = jnp.tile(x, (1, bound_k // k)), jnp.tile(w, (1, bound_k // k))
    got = reference.int_dot(xs, ws, x_bits, w_bits)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(exact) * (bound_k // k))


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a CUDA GPU')
def test_gpu_dt_proj_shape_masked_k_and_fused_bias_equal_the_unfused_path():
  """Vim-B's dt_proj on the card: K = 48 (one masked K block) with the bias in the epilogue,
  bit-equal to the kernel without bias followed by XLA's bf16 add."""
  rng = np.random.default_rng(5)
  m, k, n = 64 * 197, 48, 1536
  x, w, xout, oracle_in, oracle_out = _operands(rng, m, k, n, 4, 8)
  acc_in, acc_out = api.mixed_gemm_accumulators(x, w, xout, weight_bits=4,
                                                implementation='triton')
  np.testing.assert_array_equal(np.asarray(acc_in), oracle_in)
  np.testing.assert_array_equal(np.asarray(acc_out), oracle_out)
  a = jnp.asarray(rng.uniform(0.01, 0.1, (m,)), jnp.float32)
  o = jnp.asarray(rng.uniform(0.1, 1.0, (m,)), jnp.float32)
  ws = jnp.asarray(rng.uniform(0.001, 0.01, (n,)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(n,)) * 3, jnp.float32)
  kw = dict(weight_bits=4, implementation='triton')
  fused = api.mixed_gemm(x, a, w, ws, xout, o, bias, **kw)
  apart = api.mixed_gemm(x, a, w, ws, xout, o, **kw)
  # The separate add on the host (numpy rounds every bf16 conversion; XLA on the GPU may not).
  bf16 = jnp.bfloat16
  separate = (np.asarray(apart, np.float32) + np.asarray(bias).astype(bf16).astype(np.float32))
  np.testing.assert_array_equal(np.asarray(fused, np.float32),
                                separate.astype(bf16).astype(np.float32))


@pytest.mark.parametrize('implementation', ['xla', 'triton'])
def test_per_step_scales_read_by_row_equal_per_token_scales(implementation):
  """a_scale given per step (L,) (row (b, t) reads step t) and floored in the epilogue
  (`a_floor`) gives the bits of the broadcast, clamped (B, L) scales: what the quantized Linear
  hands over instead of a clamp and a broadcast per call."""
  rng = np.random.default_rng(21)
  b, l, k, n = 3, 7, 64, 48
  x = jnp.asarray(rng.integers(-7, 8, (b, l, k)), jnp.int8)
  w = _kmajor(rng.integers(-7, 8, (k, n)).astype(np.int8), 4)
  w_scale = jnp.asarray(rng.uniform(0.01, 0.02, n), jnp.float32)
  steps = jnp.asarray(rng.uniform(0.1, 0.2, l), jnp.float32).at[2].set(0.0)  # floored
  kw = dict(weight_bits=4, implementation=implementation,
            interpret=True if implementation == 'triton' else None)
  per_token = jnp.broadcast_to(jnp.maximum(steps, 1e-8)[None, :], (b, l))
  want = api.mixed_gemm(x, per_token, w, w_scale, **kw)
  got = api.mixed_gemm(x, steps, w, w_scale, a_floor=1e-8, **kw)
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  with pytest.raises(ValueError, match=r'per-step shape \(7,\)'):
    api.mixed_gemm(x, steps[:5], w, w_scale, **kw)
