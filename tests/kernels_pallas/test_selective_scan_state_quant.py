"""B and C quantized inside the Triton selective scan (`state_quant.StateQuant`) against the
separate act_quant pass followed by the scan: the same y bit for bit in the interpreter (the
kernel runs act_quant's own per-step operations on the rows it loads), through the api's
dispatch, under the model's vmap over directions, and lowered for an abstract H100."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.act_quant import producers
from kernels_pallas.act_quant.config import ActQuantParams
from kernels_pallas.selective_scan import api
from kernels_pallas.selective_scan import pallas_triton
from kernels_pallas.selective_scan.config import SelectiveScanBlockConfig
from kernels_pallas.selective_scan.state_quant import StateQuant
from tests.interpreted import CPU_FAST_COMPILE
from tests.kernels_pallas.abstract_gpu import abstract_h100
from tests.kernels_pallas.test_selective_scan_triton import _abstract_h100_inputs, make_inputs


def _state_quant(rng, length, params: ActQuantParams):
  """Static steps small enough that most steps trigger, zero points on an asymmetric grid."""
  qmax = params.qmax
  steps = lambda: jnp.asarray(rng.uniform(1.5, 3.0, length) / qmax, jnp.float32)
  zeros = lambda: (None if params.symmetric
                   else jnp.asarray(rng.integers(qmax // 3, qmax // 2 + 1, length), jnp.int32))
  return StateQuant(params, steps(), steps(), zeros(), zeros())


def _inputs(seed, batch, length, channels, n_state, dtype):
  """make_inputs' scan inputs with heavy-tailed B and C and a loud state every third step, so
  outliers are found and kept across a window."""
  args = list(make_inputs(seed, batch, length, channels, n_state, dtype))
  rng = np.random.default_rng(seed + 100)
  for i in (3, 4):
    x = rng.standard_t(3.0, (batch, length, n_state)).astype(np.float32)
    x[:, ::3, i] += 9.0
    args[i] = jnp.asarray(x, dtype)
  return args


CASES = {  # (batch, length, channels, n_state, dtype, params, block config)
    'symmetric_int_outliers_bf16': (2, 23, 64, 16, jnp.bfloat16,
                                    ActQuantParams(bits=4, k=3.0, n_refresh=4),
                                    SelectiveScanBlockConfig(32, 4, num_stages=2)),
    'asymmetric_int_outliers_fp32': (2, 13, 48, 16, jnp.float32,
                                     ActQuantParams(bits=4, symmetric=False, k=2.0, n_refresh=5),
                                     SelectiveScanBlockConfig(32, 4)),
    'no_outliers_padded_N': (1, 9, 32, 5, jnp.float32,
                             ActQuantParams(bits=4, outliers='none', n_refresh=3), None),
}


@pytest.mark.parametrize('case', list(CASES))
def test_kernel_equals_the_separate_pass_then_the_scan(case):
  batch, length, channels, n_state, dtype, params, cfg = CASES[case]
  args = _inputs(1, batch, length, channels, n_state, dtype)
  sq = _state_quant(np.random.default_rng(2), length, params)
  u, delta, A, B, C, D, z, bias = args
  b_q, c_q = sq.dequantized(B, C, 'xla')
  assert float(jnp.mean(b_q != B)) > 0.5   # the quantizer really changed them
  jit = lambda f: jax.jit(f, compiler_options=CPU_FAST_COMPILE)  # one compiler for both
  want = jit(lambda *a: pallas_triton.selective_scan(*a, interpret=True, block_config=cfg))(
      u, delta, A, b_q, c_q, D, z, bias)
  got = jit(lambda *a: pallas_triton.selective_scan_state_quant(
      *a, state_quant=sq, interpret=True, block_config=cfg))(*args)
  assert got.dtype == want.dtype
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_state_quant_with_the_direction_mean_in_the_epilogue():
  """Both fusions in one call (the model's backward direction with B/C quantized in the
  kernel and `mean_with`): the mean of the fused scan's y, bit for bit."""
  batch, length, channels, n_state, dtype, params, cfg = CASES['symmetric_int_outliers_bf16']
  args = _inputs(4, batch, length, channels, n_state, dtype)
  other = jnp.asarray(np.random.default_rng(6).standard_normal(args[0].shape), dtype)
  sq = _state_quant(np.random.default_rng(5), length, params)
  run = lambda *a, **kw: pallas_triton.selective_scan_state_quant(
      *a, state_quant=sq, interpret=True, block_config=cfg, **kw)
  got, want = jax.jit(lambda o, *a: (
      run(*a, mean_with=o), producers.DirectionMean(o, run(*a), dtype).materialize()),
      compiler_options=CPU_FAST_COMPILE)(other, *args)
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_api_dispatch_and_the_models_vmap_over_directions():
  """'triton' runs the quantizer in the kernel, 'sequential' act_quant then the reference (to
  the scan's float tolerance); vmapped over two directions with their own steps, each
  direction's own call bit for bit."""
  params = ActQuantParams(bits=4, k=3.0, n_refresh=4)
  rng = np.random.default_rng(3)
  directions = [_inputs(5 + d, 2, 11, 32, 16, jnp.float32) for d in range(2)]
  quants = [_state_quant(rng, 11, params) for _ in range(2)]
  run = lambda impl: (lambda args, sq: api.selective_scan(
      *args, state_quant=sq, implementation=impl, interpret=True))
  jit = lambda f: jax.jit(f, compiler_options=CPU_FAST_COMPILE)  # one compiler for both
  one = [jit(run('triton'))(a, q) for a, q in zip(directions, quants)]
  stack = lambda *xs: None if xs[0] is None else jnp.stack(xs)
  both = jit(jax.vmap(run('triton')))(
      jax.tree.map(stack, *directions, is_leaf=lambda x: x is None),
      jax.tree.map(stack, *quants))
  for d in range(2):
    np.testing.assert_array_equal(np.asarray(both[d]), np.asarray(one[d]))
    ref = run('sequential')(directions[d], quants[d])
    np.testing.assert_allclose(np.asarray(one[d]), np.asarray(ref), rtol=1e-4, atol=1e-5)


def test_bad_state_quant_is_rejected_with_the_reason():
  args = _inputs(1, 1, 7, 32, 16, jnp.float32)
  ok = _state_quant(np.random.default_rng(0), 7, ActQuantParams(bits=4, n_refresh=3))
  with pytest.raises(ValueError, match='forward time order'):
    api.selective_scan(*args, state_quant=ok, reverse=True, implementation='triton')
  with pytest.raises(ValueError, match=r'b_scale must have shape \(7,\)'):
    api.selective_scan(*args, implementation='triton',
                       state_quant=StateQuant(ok.params, ok.b_scale[:5], ok.c_scale))
  batch_trigger = StateQuant(ActQuantParams(bits=4, trigger='batch'), ok.b_scale, ok.c_scale)
  with pytest.raises(ValueError, match='couples the samples'):
    api.selective_scan(*args, state_quant=batch_trigger, implementation='triton')
  assert StateQuant(ActQuantParams(bits=4, outliers='float'), ok.b_scale,
                    ok.c_scale).unsupported_reason()


def test_lowers_to_triton_for_h100():
  """The kernel with the quantizer inside lowers for an abstract H100 (every op has a Triton
  rule: the inline-PTX divisions and reciprocals, the bit-level bf16 rounding)."""
  args = _abstract_h100_inputs()
  length = args[0].shape[1]
  scale = jax.ShapeDtypeStruct((length,), jnp.float32)
  zero = jax.ShapeDtypeStruct((length,), jnp.int32)
  for params, zeros in ((ActQuantParams(bits=4, k=3.0), (None, None)),
                        (ActQuantParams(bits=4, symmetric=False, k=4.0), (zero, zero))):
    fn = jax.jit(lambda a, s, c, bz, cz, params=params: pallas_triton.selective_scan_state_quant(
        *a, state_quant=StateQuant(params, s, c, bz, cz), interpret=False,
        block_config=SelectiveScanBlockConfig(64, 4, num_warps=1, num_stages=2)))
    with warnings.catch_warnings():
      warnings.simplefilter('error')
      with abstract_h100():
        text = fn.trace(args, scale, scale, *zeros).lower(lowering_platforms=('cuda',)).as_text()
    assert '__gpu$xla.gpu.triton' in text


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a CUDA GPU')
def test_gpu_kernel_matches_the_separate_pass_at_vim_b_shape():
  """On the card, against act_quant's own kernel then the scan (Vim-B d_inner, 197 tokens): a
  threshold tie decided the other way in one reduction order moves one lane by one step, so
  a vanishing fraction of outputs may differ; ||got - want|| / ||want|| stays at rounding."""
  args = _inputs(7, 8, 197, 1536, 16, jnp.bfloat16)
  sq = _state_quant(np.random.default_rng(8), 197, ActQuantParams(bits=4, k=3.0))
  u, delta, A, B, C, D, z, bias = args
  b_q, c_q = sq.dequantized(B, C, 'triton')
  want = np.asarray(pallas_triton.selective_scan(u, delta, A, b_q, c_q, D, z, bias), np.float32)
  got = np.asarray(pallas_triton.selective_scan_state_quant(*args, state_quant=sq), np.float32)
  rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
  print(f'state_quant in the scan vs separate pass: rel err {rel:.2e}, '
        f'differing outputs {np.mean(got != want):.2e}')
  assert rel < 1e-3
