"""act_quant's parallel window (`ActQuantBlockConfig(window='parallel')`): a refresh window's
steps held as the rows of one tile, their outlier masks found by the fixed-point rounds of
`pallas_triton._window_masks`. It must give the serial recurrence's codes, scales and masks
exactly (CPU, interpret mode), and lower for the GPU.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.act_quant import api, pallas_triton, reference
from kernels_pallas.act_quant.config import ActQuantBlockConfig, ActQuantParams
from tests.interpreted import CPU_FAST_COMPILE

PARALLEL = ActQuantBlockConfig(window='parallel')


def _activations(rng, b, l, c, spike_rate=0.04):
  """Gaussian rows with spikes at random channels and steps: many steps fire and flag new
  channels, so later rows' statistics depend on earlier rows' masks (several rounds)."""
  x = rng.standard_normal((b, l, c)).astype(np.float32)
  x *= np.where(rng.random((b, l, c)) < spike_rate, 12.0, 1.0)
  return jnp.asarray(x)


def _parallel(fn, *args, **kw):
  run = lambda *a: fn(*a, implementation='triton', interpret=True, block_config=PARALLEL, **kw)
  return jax.jit(run, compiler_options=CPU_FAST_COMPILE)(*args)


def _assert_equal_trees(got, want):
  got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
  assert len(got_leaves) == len(want_leaves)
  for g, w in zip(got_leaves, want_leaves):
    assert g.shape == w.shape and g.dtype == w.dtype
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@pytest.mark.parametrize('symmetric,pack,c', [(True, True, 48), (True, False, 192),
                                              (False, False, 40)])
def test_parallel_window_equals_the_serial_recurrence(symmetric, pack, c):
  # L = 23: windows [0, 10), [10, 20) and a short [20, 23); C = 192 is three chunks of 64.
  rng = np.random.default_rng(c)
  x = _activations(rng, 2, 23, c)
  scale = jnp.asarray(rng.uniform(0.1, 0.3, 23), jnp.float32)
  spec = ActQuantParams(bits=4, symmetric=symmetric, k=2.0 if symmetric else 3.0)
  zero = None if symmetric else jnp.asarray(rng.integers(3, 12, 23), jnp.float32)
  want = reference.act_quant_xla(x, scale, spec, zero, pack=pack)
  assert 0.02 < float(want.outlier_mask.mean()) < 0.5  # the rounds have work to do
  got = _parallel(lambda x, s, z, **kw: api.act_quant(x, s, spec, z, pack_int4=pack, **kw),
                  x, scale, zero)
  _assert_equal_trees(got, want)


def test_parallel_window_dequantized_and_without_outliers():
  rng = np.random.default_rng(1)
  x = _activations(rng, 3, 17, 16)  # B/C's width; windows of 10 and 7 steps
  scale = jnp.asarray(rng.uniform(0.1, 0.3, 17), jnp.float32)
  for spec in (ActQuantParams(bits=4, k=2.0), ActQuantParams(bits=4, outliers='none')):
    want = reference.dequantize(reference.act_quant_xla(x, scale, spec))
    got = _parallel(lambda x, s, **kw: api.act_quant_dequantized(x, s, spec, **kw), x, scale)
    _assert_equal_trees(got, want)


def test_window_choice():
  """Serial where the window is long or the trigger couples samples; rows a power of two >= 16."""
  assert PARALLEL.window_rows(10, per_sample=True) == 16
  assert PARALLEL.window_rows(20, per_sample=True) == 32
  assert PARALLEL.window_rows(197, per_sample=True) == 0    # never refreshed: serial
  assert PARALLEL.window_rows(10, per_sample=False) == 0    # trigger='batch'
  assert ActQuantBlockConfig(window='serial').window_rows(10, per_sample=True) == 0
  assert PARALLEL.window_warps(16, 1536) == 8 and PARALLEL.window_warps(16, 16) == 2
  with pytest.raises(ValueError, match='window'):
    ActQuantBlockConfig(window='diagonal')


@pytest.mark.parametrize('symmetric,dequantized', [(True, False), (False, True)])
def test_parallel_window_lowers_to_triton_for_h100(symmetric, dequantized):
  """Lowers (no compile) for an abstract H100: the while loop and the row product included."""
  from jax.sharding import AbstractDevice, AbstractMesh  # pylint: disable=g-import-not-at-top
  h100 = AbstractDevice(device_kind='NVIDIA H100 80GB HBM3', num_cores=132, platform='cuda')
  mesh = AbstractMesh((1,), ('x',), abstract_device=h100)
  b, l, c = 64, 197, 1536
  zero = None if symmetric else jax.ShapeDtypeStruct((l,), jnp.int32)
  common = dict(code_range=(-7, 7, -127, 127) if symmetric else (0, 15, 0, 255), k=3.0,
                n_refresh=10, std_ddof=1, detect=True, block_c=512, block_b=1, num_warps=8,
                n_chunks=3, window_rows=16)
  args = (jax.ShapeDtypeStruct((b, l, c), jnp.bfloat16), jax.ShapeDtypeStruct((l,), jnp.float32),
          zero)
  with jax.sharding.use_abstract_mesh(mesh):
    if dequantized:
      traced = pallas_triton.act_quant_dequantized.trace(*args, out_dtype=jnp.dtype(jnp.bfloat16),
                                                         **common)
    else:
      traced = pallas_triton.act_quant.trace(*args, trigger='sample', pack=True, **common)
    lowered = traced.lower(lowering_platforms=('cuda',))
  assert '__gpu$xla.gpu.triton' in lowered.as_text()


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a CUDA GPU')
@pytest.mark.parametrize('c', [16, 1536])
def test_gpu_parallel_window_matches_serial_kernel_at_vim_shape(c):
  """Both walks on the GPU run the same reductions per row, so they agree exactly; report the
  mismatch to the XLA reference too (reductions in another order may flip a tie)."""
  rng = np.random.default_rng(c)
  x = _activations(rng, 64, 197, c).astype(jnp.bfloat16)
  scale = jnp.asarray(rng.uniform(0.2, 0.5, 197), jnp.float32)
  spec = ActQuantParams(bits=4)
  run = lambda window: api.act_quant(x, scale, spec, pack_int4=True, implementation='triton',
                                     block_config=ActQuantBlockConfig(window=window))
  serial, parallel = run('serial'), run('parallel')
  want = reference.act_quant_xla(x, scale, spec, pack=True)
  for field in ('inlier_q', 'outlier_q', 'outlier_scale', 'outlier_mask'):
    p, s, w = (np.asarray(getattr(o, field)) for o in (parallel, serial, want))
    print(f'C={c} {field}: parallel vs serial {np.mean(p != s):.2e}, vs XLA {np.mean(p != w):.2e}')
    assert np.mean(p != s) < 1e-5, field
