"""Pallas Triton selective scan vs the XLA reference.

CPU: the kernel runs in the Pallas interpreter (`interpret=True`), and its Triton lowering is
checked by lowering ahead-of-time for an abstract H100. GPU (`-m gpu`): the compiled kernel.
Errors are ||out - ref|| / ||ref|| against the sequential (lax.scan) reference.
"""
import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import _pallas_compat
from kernels_pallas.act_quant import producers
from kernels_pallas.selective_scan import api
from kernels_pallas.selective_scan import config as scan_config
from kernels_pallas.selective_scan import pallas_triton
from kernels_pallas.selective_scan import reference
from kernels_pallas.selective_scan import triton_common
from kernels_pallas.selective_scan.config import SelectiveScanBlockConfig, default_block_config
from tests.interpreted import CPU_FAST_COMPILE
from tests.kernels_pallas.abstract_gpu import abstract_h100

FP32_TOL = 1e-5
BF16_TOL = 1e-2
ARG_NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')

on_gpu = pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a CUDA GPU')


def make_inputs(seed, batch, length, channels, n_state, dtype, *, skip=True, gate=True,
                bias=True):
  """Vim-like inputs: S4D-real A, dt biases that put softplus(dt) in [1e-3, 1e-1]. Drawn with
  numpy: a jitted sampler compiles once per shape (~0.3 s each on CPU)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.standard_normal(shape, np.float32)
  u = normal(batch, length, channels)
  delta = 0.5 * normal(batch, length, channels)
  a_log = np.log(np.arange(1, n_state + 1, dtype=np.float32))[None, :]
  A = -np.exp(a_log + 0.1 * normal(channels, n_state))
  B = normal(batch, length, n_state)
  C = normal(batch, length, n_state)
  D = normal(channels) if skip else None
  z = normal(batch, length, channels) if gate else None
  dt_init = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), channels)).astype(np.float32)
  delta_bias = (dt_init + np.log(-np.expm1(-dt_init))) if bias else None  # softplus^-1
  cast = lambda x, to=dtype: None if x is None else jnp.asarray(x.astype(to))
  return (cast(u), cast(delta), cast(A, np.float32), cast(B), cast(C), cast(D, np.float32),
          cast(z), cast(delta_bias, np.float32))


def rel_err(out, ref):
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def reference_scan(args, **kw):
  return reference.selective_scan_xla(*args, sequential=True, **kw)


# (batch, length, channels, n_state, dtype, reverse, block config, input options, softplus)
CPU_CASES = {
    'fp32_L_and_D_ragged': (2, 13, 48, 16, jnp.float32, False, SelectiveScanBlockConfig(32, 4), {},
                            True),
    'fp32_reverse_prefetch': (2, 13, 48, 16, jnp.float32, True,
                              SelectiveScanBlockConfig(32, 4, num_stages=2), {}, True),
    'fp32_L_multiple_prefetch_reverse': (1, 8, 32, 16, jnp.float32, True,
                                         SelectiveScanBlockConfig(32, 4, num_stages=2), {}, True),
    'bf16_forward': (2, 11, 64, 16, jnp.bfloat16, False, None, {}, True),
    'bf16_reverse': (2, 11, 64, 16, jnp.bfloat16, True, None, {}, True),
    'fp32_no_skip_gate_bias': (1, 9, 40, 16, jnp.float32, False, SelectiveScanBlockConfig(32, 2),
                               dict(skip=False, gate=False, bias=False), True),
    'fp32_no_softplus': (1, 9, 32, 16, jnp.float32, True, SelectiveScanBlockConfig(32, 4),
                         dict(bias=False), False),
    'fp32_groups_padded_N': (1, 9, 40, 5, jnp.float32, True,  # 3rd group fully masked
                             SelectiveScanBlockConfig(96, 3, num_stages=2), {}, True),
    'fp32_two_warps': (1, 7, 100, 16, jnp.float32, False,
                       SelectiveScanBlockConfig(64, 4, num_warps=2), {}, True),
    'fp32_chunk_longer_than_L': (1, 3, 32, 16, jnp.float32, True, SelectiveScanBlockConfig(32, 8),
                                 {}, True),
    # Time split: 13 steps in 4 segments of 4 (the last one masked past the sequence), the
    # segments chained by the carry pass; both directions, the prefetching loop and a tail.
    'fp32_segments_ragged': (2, 13, 48, 16, jnp.float32, False,
                             SelectiveScanBlockConfig(32, 3, time_segments=4), {}, True),
    'fp32_segments_reverse_prefetch': (1, 13, 40, 5, jnp.float32, True,
                                       SelectiveScanBlockConfig(32, 2, num_stages=2,
                                                                time_segments=3), {}, True),
    'fp32_segments_no_bias': (1, 8, 32, 16, jnp.float32, False,
                              SelectiveScanBlockConfig(32, 4, time_segments=2),
                              dict(skip=False, gate=False, bias=False), True),
}


@pytest.mark.parametrize('case', list(CPU_CASES))
def test_interpret_matches_reference(case):
  batch, length, channels, n_state, dtype, reverse, cfg, opts, softplus = CPU_CASES[case]
  args = make_inputs(0, batch, length, channels, n_state, dtype, **opts)
  out, ref = jax.jit(lambda *a: (  # one program: op by op every primitive compiles on its own
      pallas_triton.selective_scan(*a, delta_softplus=softplus, reverse=reverse, interpret=True,
                                   block_config=cfg),
      reference_scan(a, delta_softplus=softplus, reverse=reverse)),
      compiler_options=CPU_FAST_COMPILE)(*args)
  assert out.shape == ref.shape and out.dtype == args[0].dtype
  err = rel_err(out, ref)
  tol = FP32_TOL if dtype == jnp.float32 else BF16_TOL
  assert err < tol, f'{case}: ||out-ref||/||ref|| = {err:.2e} (tol {tol:.0e})'


def test_reverse_is_not_forward():
  """Guards the reverse test above against a kernel that ignores `reverse`."""
  args = make_inputs(1, 1, 6, 32, 16, jnp.float32)
  fwd, bwd, ref = jax.jit(lambda *a: (pallas_triton.selective_scan(*a, reverse=False, interpret=True),
                                      pallas_triton.selective_scan(*a, reverse=True, interpret=True),
                                      reference_scan(a, reverse=True)))(*args)
  assert rel_err(bwd, fwd) > 1e-2
  assert rel_err(bwd, ref) < FP32_TOL


@pytest.mark.parametrize('reverse', [False, True])
def test_gradients_match_reference(reverse):
  args = make_inputs(2, 2, 7, 40, 16, jnp.float32)
  weights = np.random.default_rng(9).standard_normal(args[0].shape, np.float32)
  cfg = SelectiveScanBlockConfig(32, 4)

  def kernel_loss(*a):
    return jnp.sum(weights * pallas_triton.selective_scan(*a, reverse=reverse, interpret=True,
                                                          block_config=cfg))

  def reference_loss(*a):
    return jnp.sum(weights * reference.selective_scan_xla(*a, reverse=reverse))

  argnums = tuple(range(len(ARG_NAMES)))
  grads, expected = jax.jit(lambda *a: (jax.grad(kernel_loss, argnums=argnums)(*a),
                                        jax.grad(reference_loss, argnums=argnums)(*a)),
                            compiler_options=CPU_FAST_COMPILE)(*args)
  for name, g, e in zip(ARG_NAMES, grads, expected):
    assert g.shape == e.shape and g.dtype == e.dtype, name
    err = rel_err(g, e)
    assert err < FP32_TOL, f'grad {name}: rel err {err:.2e}'


def test_gradients_without_optional_inputs():
  u, delta, A, B, C, _, _, _ = make_inputs(3, 1, 5, 32, 16, jnp.float32)
  loss = lambda f: (lambda *a: jnp.sum(f(*a) ** 2))
  kernel = lambda *a: pallas_triton.selective_scan(*a, interpret=True)
  ref = lambda *a: reference.selective_scan_xla(*a)
  grads, expected = jax.jit(lambda *a: (jax.grad(loss(kernel), argnums=(0, 1, 2, 3, 4))(*a),
                                        jax.grad(loss(ref), argnums=(0, 1, 2, 3, 4))(*a)),
                            compiler_options=CPU_FAST_COMPILE)(u, delta, A, B, C)
  for name, g, e in zip(ARG_NAMES, grads, expected):
    assert rel_err(g, e) < FP32_TOL, name


def test_api_dispatches_to_kernel():
  args = make_inputs(4, 1, 6, 32, 16, jnp.float32)
  out, ref, (y, states) = jax.jit(lambda *a: (
      api.selective_scan(*a, implementation='triton'),  # interpret=None: interpreted on CPU
      reference_scan(a), api.selective_scan(*a, implementation='triton', return_states=True)))(
          *args)
  assert rel_err(out, ref) < FP32_TOL
  assert states.shape == (1, 6, 32, 16) and rel_err(y, out) < FP32_TOL


MEAN_CASES = {  # (dtype, reverse, block config, check gradients): bf16 is the models' dtype
    'bf16_prefetch_grads': (jnp.bfloat16, False, SelectiveScanBlockConfig(32, 4, num_stages=2),
                            True),
    'bf16_reverse': (jnp.bfloat16, True, SelectiveScanBlockConfig(32, 4), False),
    'fp32_ragged_prefetch': (jnp.float32, False, SelectiveScanBlockConfig(32, 5, num_stages=2),
                             False),
    # the time split: the mean formed in the second launch's epilogue; gradients through the
    # adjoint, which walks the whole sequence
    'bf16_segments_reverse_grads': (jnp.bfloat16, True,
                                    SelectiveScanBlockConfig(32, 2, time_segments=3), True),
}


@pytest.mark.parametrize('case', list(MEAN_CASES))
def test_mean_with_equals_the_scan_then_the_direction_mean(case):
  """`mean_with`: the epilogue's mean of the two directions (token order) equals the scan
  followed by `DirectionMean` (Vim's v2 output) bit for bit in bf16, and the XLA
  implementations form the same mean; the gradients are the unfused composition's."""
  dtype, reverse, cfg, check_grads = MEAN_CASES[case]
  args = make_inputs(6, 2, 13, 48, 16, dtype)
  other = jnp.asarray(np.random.default_rng(7).standard_normal(args[0].shape, np.float32), dtype)
  weights = np.random.default_rng(8).standard_normal(args[0].shape, np.float32)
  kernel = lambda o, *a, **kw: pallas_triton.selective_scan(
      *a, reverse=reverse, interpret=True, block_config=cfg, **kw)
  fused = lambda o, *a: kernel(o, *a, mean_with=o)
  unfused = lambda o, *a: producers.DirectionMean(o, kernel(o, *a), dtype).materialize()
  loss = lambda f: (lambda o, *a: jnp.sum(weights * f(o, *a).astype(jnp.float32)))
  grads = lambda f: (jax.grad(loss(f), argnums=(0, 1, 2, 3))(other, *args) if check_grads
                     else ())
  got, want, xla, got_grads, want_grads = jax.jit(lambda o, *a: (
      fused(o, *a), unfused(o, *a),
      api.selective_scan(*a, reverse=reverse, implementation='sequential', mean_with=o),
      grads(fused), grads(unfused)), compiler_options=CPU_FAST_COMPILE)(other, *args)
  assert got.dtype == dtype and got.shape == args[0].shape
  if dtype == jnp.bfloat16:
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  assert rel_err(got, want) < 1e-6
  assert rel_err(xla, want) < (FP32_TOL if dtype == jnp.float32 else BF16_TOL)
  for name, g, e in zip(('mean_with', 'u', 'delta', 'A'), got_grads, want_grads):
    assert rel_err(g, e) < 1e-6, name
  assert rel_err(got, kernel(other, *args)) > 0.1  # the mean, not this direction's y


def test_mean_with_is_validated():
  args = make_inputs(9, 1, 5, 32, 16, jnp.float32)
  with pytest.raises(ValueError, match=r"mean_with must be a float array of u's shape "
                                       r"\(1, 5, 32\).*got float32\[1, 4, 32\]"):
    api.selective_scan(*args, implementation='triton', mean_with=args[0][:, :4])
  with pytest.raises(ValueError, match='cannot be combined with return_states'):
    api.selective_scan(*args, implementation='sequential', mean_with=args[0],
                       return_states=True)


def test_softplus_matches_float64():
  """The kernel's branch-free softplus; exp2 with log2(e) folded in costs ~|x| * 6e-8 relative."""
  x = jnp.linspace(-40.0, 40.0, 20001, dtype=jnp.float32)
  got = np.asarray(triton_common.softplus(x), np.float64)
  want = np.logaddexp(np.asarray(x, np.float64), 0.0)
  np.testing.assert_allclose(got, want, rtol=4e-6, atol=0)
  typical = np.abs(np.asarray(x)) < 10  # dt_proj outputs live here
  np.testing.assert_allclose(got[typical], want[typical], rtol=1e-6, atol=0)


def _abstract_h100_inputs():
  """Abstract Vim-like inputs (u, delta, A, B, C, D, z, delta_bias; B=4, L=197, D=200, N=16),
  for ahead-of-time lowering on CPU (`abstract_h100`)."""
  batch, length, channels, n_state = 4, 197, 200, 16
  shape = lambda *s, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(s, dtype)
  args = (shape(batch, length, channels), shape(batch, length, channels),
          shape(channels, n_state, dtype=jnp.float32), shape(batch, length, n_state),
          shape(batch, length, n_state), shape(channels, dtype=jnp.float32),
          shape(batch, length, channels), shape(channels, dtype=jnp.float32))
  return args


def test_lowers_to_triton_for_h100():
  """AOT lowering for an abstract H100 on CPU: catches kernels that interpret but don't lower,
  and checks the deprecation warning is filtered (warnings are errors here)."""
  args = _abstract_h100_inputs()
  cfg = SelectiveScanBlockConfig(64, 4, num_warps=1, num_stages=2)
  fn = jax.jit(lambda *a: pallas_triton.selective_scan(*a, reverse=True, interpret=False,
                                                       block_config=cfg))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    with abstract_h100():
      text = fn.trace(*args).lower(lowering_platforms=('cuda',)).as_text()
  assert '__gpu$xla.gpu.triton' in text
  assert 'grid_x = 4 : i32, grid_y = 4 : i32' in text  # ceil(200 / 64) channel blocks x batch
  assert 'num_warps = 1 : i32' in text
  mean = jax.jit(lambda *a: pallas_triton.selective_scan(*a, interpret=False, block_config=cfg,
                                                        mean_with=a[0]))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    with abstract_h100():
      text = mean.trace(*args).lower(lowering_platforms=('cuda',)).as_text()
  assert 'selective_scan_fwd_mean' in text
  split = jax.jit(lambda *a: pallas_triton.selective_scan(
      *a, interpret=False, block_config=dataclasses.replace(cfg, time_segments=3)))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    with abstract_h100():
      text = split.trace(*args).lower(lowering_platforms=('cuda',)).as_text()
  assert text.count('grid_x = 4 : i32, grid_y = 4 : i32, grid_z = 3 : i32') == 2  # both walks
  assert 'selective_scan_segment_ends' in text and 'selective_scan_fwd' in text


def test_block_config_validation():
  SelectiveScanBlockConfig(96, 5, num_warps=1, num_stages=2)  # any multiple of 32 * num_warps
  bad = [dict(block_d=48), dict(block_d=32, num_warps=2), dict(block_d=2048),
         dict(chunk_t=0), dict(chunk_t=65), dict(num_warps=3), dict(num_stages=0)]
  for kw in bad:
    with pytest.raises(ValueError, match='SelectiveScanBlockConfig'):
      SelectiveScanBlockConfig(**kw)
  with pytest.raises(ValueError, match='time_segments'):
    SelectiveScanBlockConfig(time_segments=0)
  with pytest.raises(TypeError, match='must be an int'):
    SelectiveScanBlockConfig(block_d=32.0)
  with pytest.raises(TypeError, match='SelectiveScanBlockConfig'):
    pallas_triton.selective_scan(*make_inputs(0, 1, 2, 32, 4, jnp.float32), interpret=True,
                                 block_config=dataclasses.asdict(SelectiveScanBlockConfig()))


def test_default_block_configs():
  for channels in (8, 192, 384, 768, 1536):
    for dtype in (jnp.float32, jnp.bfloat16):
      cfg = default_block_config(channels, dtype)
      assert cfg.block_d % cfg.group_d == 0
  cfg = default_block_config(1536, jnp.bfloat16)
  assert cfg.block_d // cfg.group_d == 2       # two channels (and their states) per thread
  assert cfg.time_segments == 1
  # Small batches split the sequence until about SEGMENT_TARGET_PROGRAMS programs run, each
  # segment at least MIN_SEGMENT_STEPS long; a batch that fills the GPU is not split.
  programs = 1536 // cfg.block_d
  cfg = default_block_config(1536, jnp.bfloat16, batch=1, length=197)
  assert cfg.time_segments == min(-(-scan_config.SEGMENT_TARGET_PROGRAMS // programs),
                                  197 // scan_config.MIN_SEGMENT_STEPS)
  assert default_block_config(1536, jnp.bfloat16, batch=64, length=197).time_segments == 1
  assert default_block_config(1536, jnp.bfloat16, batch=1, length=20).time_segments == 1
  with pytest.raises(ValueError, match='positive'):
    default_block_config(0, jnp.float32)
  with pytest.raises(TypeError, match='floating'):
    default_block_config(64, jnp.int32)


def test_input_validation():
  args = list(make_inputs(0, 1, 4, 32, 16, jnp.float32))
  cases = {0: (args[0][0], 'u must be'), 1: (args[1][:, :2], 'delta must'),
           2: (args[2].T, 'A must'), 3: (args[3][0], 'B must'), 6: (args[6][..., :8], 'z must'),
           7: (args[7][:4], 'delta_bias must')}
  for index, (bad, message) in cases.items():
    broken = list(args)
    broken[index] = bad
    with pytest.raises(ValueError, match=message):
      pallas_triton.selective_scan(*broken, interpret=True)
  broken = list(args)
  broken[0] = args[0].astype(jnp.int32)
  with pytest.raises(TypeError, match='floating point'):
    pallas_triton.selective_scan(*broken, interpret=True)


def test_compat_helpers():
  assert _pallas_compat.resolve_interpret(None) == (jax.default_backend() != 'gpu')
  assert _pallas_compat.resolve_interpret(False) is False
  params = _pallas_compat.triton_compiler_params(2, 3)
  assert (params.num_warps, params.num_stages) == (2, 3)


# ------------------------------------------- backward kernel (vjp='kernel') and states output


def vjp_of(scan, args, cotangent):
  """scan(*args) and the cotangents of its present (non-None) inputs, keyed by name, in one jit
  (one compilation of the interpreted kernels keeps the CPU tests fast)."""
  present = [i for i, x in enumerate(args) if x is not None]

  def out_and_grads(xs, ct):
    def of_present(*xs):
      full = list(args)
      for i, x in zip(present, xs):
        full[i] = x
      return scan(*full)

    out, pullback = jax.vjp(of_present, *xs)
    return out, pullback(ct)

  out, grads = jax.jit(out_and_grads, compiler_options=CPU_FAST_COMPILE)(
      [args[i] for i in present], cotangent)
  return out, {ARG_NAMES[i]: g for i, g in zip(present, grads)}


def random_cotangent(seed, out):
  """Random cotangent(s) shaped and typed like the scan's output(s) (numpy-drawn)."""
  leaves, tree = jax.tree.flatten(out)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [jnp.asarray(rng.standard_normal(x.shape, np.float32)
                                               .astype(x.dtype)) for x in leaves])


def assert_grads_close(grads, expected, tol, what):
  assert grads.keys() == expected.keys()
  for name, e in expected.items():
    g = grads[name]
    assert g.shape == e.shape and g.dtype == e.dtype, (what, name, g.dtype, e.dtype)
    err = rel_err(g, e)
    assert err < tol, f'{what}: grad {name}: ||out-ref||/||ref|| = {err:.2e} (tol {tol:.0e})'


# (batch, length, channels, n_state, dtype, reverse, block config, input options, softplus)
KERNEL_VJP_CASES = {  # chunk_t 2 keeps the unrolled, interpreted kernels quick to compile
    'fp32_D_ragged_tail': (2, 6, 48, 16, jnp.float32, False, SelectiveScanBlockConfig(32, 2), {},
                           True),
    'fp32_reverse_two_groups_padded_N': (1, 5, 80, 5, jnp.float32, True,
                                         SelectiveScanBlockConfig(64, 2), {}, True),
    'bf16_reverse': (2, 6, 40, 16, jnp.bfloat16, True, SelectiveScanBlockConfig(32, 2), {}, True),
    'bf16_no_skip_gate_bias': (1, 6, 32, 16, jnp.bfloat16, False, SelectiveScanBlockConfig(32, 2),
                               dict(skip=False, gate=False, bias=False), True),
    'fp32_no_softplus_chunk_longer_than_L': (1, 3, 32, 16, jnp.float32, True,
                                             SelectiveScanBlockConfig(32, 8), dict(bias=False),
                                             False),
}


@pytest.mark.parametrize('case', list(KERNEL_VJP_CASES))
def test_kernel_vjp_matches_reference_vjp(case):
  batch, length, channels, n_state, dtype, reverse, cfg, opts, softplus = KERNEL_VJP_CASES[case]
  args = make_inputs(10, batch, length, channels, n_state, dtype, **opts)
  kw = dict(delta_softplus=softplus, reverse=reverse)
  y_bar = random_cotangent(11, args[0])
  kernel = lambda *a: pallas_triton.selective_scan(*a, vjp='kernel', interpret=True,
                                                   block_config=cfg, **kw)
  _, grads = vjp_of(kernel, args, y_bar)
  _, expected = vjp_of(lambda *a: reference_scan(a, **kw), args, y_bar)
  assert_grads_close(grads, expected, FP32_TOL if dtype == jnp.float32 else BF16_TOL, case)


# (dtype, reverse, vjp, time segments): the kernel and the reference backward both take a states
# cotangent; split in time, each segment's second walk writes its steps' states.
STATES_CASES = [(jnp.float32, False, 'kernel', 1), (jnp.bfloat16, True, 'kernel', 1),
                (jnp.float32, True, 'reference', 1), (jnp.float32, True, 'kernel', 2)]


@pytest.mark.parametrize('dtype,reverse,vjp,segments', STATES_CASES)
def test_kernel_states_and_their_gradients(dtype, reverse, vjp, segments):
  """The Triton forward writes the fp32 states, and gradients through y and the states match
  the reference's."""
  args = make_inputs(12, 2, 5, 40, 16, dtype)
  cfg = SelectiveScanBlockConfig(32, 2, time_segments=segments)
  scan = lambda *a: api.selective_scan(
      *a, reverse=reverse, return_states=True, implementation='triton', interpret=True,
      block_config=cfg, vjp=vjp)
  reference_states = lambda *a: reference_scan(a, reverse=reverse, return_states=True)
  cotangents = random_cotangent(13, jax.eval_shape(reference_states, *args))
  (y, states), grads = vjp_of(scan, args, cotangents)
  (y_ref, states_ref), expected = vjp_of(reference_states, args, cotangents)
  assert states.shape == states_ref.shape and states.dtype == jnp.float32
  tol = FP32_TOL if dtype == jnp.float32 else BF16_TOL
  for name, out, ref in (('y', y, y_ref), ('states', states, states_ref)):
    err = rel_err(out, ref)
    assert err < tol, f'{name}: ||out-ref||/||ref|| = {err:.2e} (tol {tol:.0e})'
  assert_grads_close(grads, expected, tol, f'states, vjp={vjp}')


@pytest.mark.parametrize('vjp', ['kernel', 'reference'])
@pytest.mark.parametrize('implementation', ['triton', 'sequential'])
def test_kernel_layout_states_and_their_gradients(vjp, implementation):
  """states_layout='blnd' hands out the kernel's (B, L, N, D) states: the 'bldn' states
  transposed, with the same input gradients for the transposed cotangent."""
  args = make_inputs(14, 2, 5, 40, 16, jnp.float32)
  kw = dict(reverse=True, return_states=True, implementation=implementation, interpret=True,
            block_config=SelectiveScanBlockConfig(32, 2), vjp=vjp)
  cotangents = random_cotangent(15, jax.eval_shape(
      lambda *a: reference_scan(a, reverse=True, return_states=True), *args))
  (y, states), grads = vjp_of(lambda *a: api.selective_scan(*a, **kw), args, cotangents)
  y_bar, states_bar = cotangents
  (y2, states2), grads2 = vjp_of(lambda *a: api.selective_scan(*a, states_layout='blnd', **kw),
                                 args, (y_bar, jnp.swapaxes(states_bar, 2, 3)))
  np.testing.assert_array_equal(np.asarray(y2), np.asarray(y))
  np.testing.assert_array_equal(np.asarray(states2), np.asarray(jnp.swapaxes(states, 2, 3)))
  assert_grads_close(grads2, grads, 1e-6, f'blnd, vjp={vjp}')
  with pytest.raises(ValueError, match='states_layout'):
    api.selective_scan(*args, return_states=True, implementation=implementation,
                       states_layout='nd')


def test_vjp_option_is_validated_by_every_implementation():
  args = make_inputs(0, 1, 2, 32, 4, jnp.float32)
  with pytest.raises(ValueError, match="unknown vjp 'xla'"):
    api.selective_scan(*args, implementation='triton', vjp='xla')
  with pytest.raises(ValueError, match="unknown vjp 'xla'"):
    api.selective_scan(*args, implementation='sequential', vjp='xla')
  with pytest.raises(ValueError, match="unknown vjp 'auto'"):
    pallas_triton.selective_scan(*args, vjp='auto', interpret=True)


def test_backward_lowers_to_triton_for_h100():
  """AOT lowering of the gradient through y and the states with vjp='kernel' for an abstract
  H100: the forward writes the states (saved for the backward), the adjoint kernel reads them."""
  args = _abstract_h100_inputs()
  cfg = SelectiveScanBlockConfig(64, 4, num_warps=1, num_stages=2)

  def loss(*a):
    y, states = pallas_triton.selective_scan(*a, reverse=True, return_states=True, vjp='kernel',
                                             interpret=False, block_config=cfg)
    return jnp.sum(y.astype(jnp.float32)) + jnp.sum(states ** 2)

  fn = jax.jit(jax.grad(loss, argnums=tuple(range(len(ARG_NAMES)))))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    with abstract_h100():
      text = fn.trace(*args).lower(lowering_platforms=('cuda',)).as_text()
  assert text.count('__gpu$xla.gpu.triton') == 2
  assert 'name = "selective_scan_fwd_states"' in text and 'name = "selective_scan_bwd"' in text


# ----------------------------------------------------------------------------- GPU (compiled)

GPU_CASES = [(8, 197, 384, 16, jnp.bfloat16), (4, 197, 768, 16, jnp.float32),
             (2, 197, 1536, 16, jnp.bfloat16), (3, 50, 200, 16, jnp.float32)]


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('batch,length,channels,n_state,dtype', GPU_CASES)
def test_gpu_matches_reference(batch, length, channels, n_state, dtype, reverse):
  args = make_inputs(5, batch, length, channels, n_state, dtype)
  ref = reference_scan(args, reverse=reverse)
  tol = FP32_TOL if dtype == jnp.float32 else BF16_TOL
  for cfg in (None, SelectiveScanBlockConfig(64, 2, num_warps=1, num_stages=2),
              SelectiveScanBlockConfig(128, 8, num_warps=4)):
    out = pallas_triton.selective_scan(*args, reverse=reverse, interpret=False, block_config=cfg)
    err = rel_err(out, ref)
    assert err < tol, f'{cfg}: ||out-ref||/||ref|| = {err:.2e}'


@pytest.mark.gpu
@on_gpu
def test_gpu_gradients_match_reference():
  args = make_inputs(6, 4, 64, 256, 16, jnp.float32)
  loss = lambda f: (lambda *a: jnp.sum(jnp.sin(f(*a))))
  kernel = lambda *a: pallas_triton.selective_scan(*a, reverse=True, interpret=False)
  ref = lambda *a: reference.selective_scan_xla(*a, reverse=True)
  argnums = tuple(range(len(ARG_NAMES)))
  grads = jax.jit(jax.grad(loss(kernel), argnums=argnums))(*args)
  expected = jax.jit(jax.grad(loss(ref), argnums=argnums))(*args)
  for name, g, e in zip(ARG_NAMES, grads, expected):
    assert rel_err(g, e) < 1e-4, name


VIM_S_ROWS = (2, 197, 768, 16)  # batch, length, channels, n_state


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float32])
def test_gpu_kernel_vjp_matches_reference(dtype, reverse):
  args = make_inputs(7, *VIM_S_ROWS, dtype)
  y_bar = random_cotangent(8, args[0])
  _, expected = vjp_of(lambda *a: reference_scan(a, reverse=reverse), args, y_bar)
  tol = 1e-4 if dtype == jnp.float32 else BF16_TOL
  for cfg in (None, SelectiveScanBlockConfig(64, 2, num_warps=1, num_stages=2),
              SelectiveScanBlockConfig(128, 8, num_warps=4)):
    kernel = lambda *a, cfg=cfg: pallas_triton.selective_scan(
        *a, reverse=reverse, vjp='kernel', interpret=False, block_config=cfg)
    assert_grads_close(vjp_of(kernel, args, y_bar)[1], expected, tol, f'{cfg}')


@pytest.mark.gpu
@on_gpu
def test_gpu_mean_with_equals_the_scan_then_the_direction_mean():
  """The epilogue's direction mean on the card at Vim-B's width, against the compiled unfused
  kernel + XLA's mean: bit for bit (the rounding is on the bits in both)."""
  args = make_inputs(12, 4, 197, 1536, 16, jnp.bfloat16)
  other = jnp.asarray(np.random.default_rng(13).standard_normal(args[0].shape, np.float32),
                      jnp.bfloat16)
  got = pallas_triton.selective_scan(*args, interpret=False, mean_with=other)
  want = producers.DirectionMean(other, pallas_triton.selective_scan(*args, interpret=False),
                                 jnp.bfloat16).materialize()
  print(f'mean_with vs unfused: rel err {rel_err(got, want):.2e}')
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize('reverse', [False, True])
def test_gpu_kernel_states_and_their_gradients(reverse):
  args = make_inputs(9, *VIM_S_ROWS, jnp.bfloat16)
  scan = lambda *a: api.selective_scan(
      *a, reverse=reverse, return_states=True, implementation='triton', interpret=False,
      vjp='kernel')
  reference_states = lambda *a: reference_scan(a, reverse=reverse, return_states=True)
  cotangents = random_cotangent(10, jax.eval_shape(reference_states, *args))
  (y, states), grads = vjp_of(scan, args, cotangents)
  (y_ref, states_ref), expected = vjp_of(reference_states, args, cotangents)
  for name, out, ref in (('y', y, y_ref), ('states', states, states_ref)):
    err = rel_err(out, ref)
    assert err < BF16_TOL, f'{name}: ||out-ref||/||ref|| = {err:.2e}'
  assert_grads_close(grads, expected, BF16_TOL, 'states')
