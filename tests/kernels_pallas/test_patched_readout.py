"""patched_readout: the Pallas kernels (interpret mode on CPU; and on a GPU) against the XLA
reference, forward and all three input gradients, on fresh random inputs."""
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.patched_readout import api
from kernels_pallas.patched_readout import pallas_triton
from kernels_pallas.patched_readout import reference
from kernels_pallas.patched_readout.config import PatchedReadoutBlockConfig, default_block_config
from tests.interpreted import CPU_FAST_COMPILE
from tests.kernels_pallas.abstract_gpu import abstract_h100


def _inputs(seed, batch, grid, channels, n_state):
  """(states, weights, patch C, cotangent) from numpy: a jitted sampler compiles per shape."""
  length = grid[0] * grid[1] + 1
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.standard_normal(shape, np.float32)
  return (normal(batch, length, channels, n_state), rng.random((batch, length - 1), np.float32),
          normal(batch, length - 1, n_state), normal(batch, length - 1, channels))


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _value_and_grads(impl, states, weights, c_patches, cotangent, **kw):
  """Output and the three input gradients, as one jitted program (op by op, every primitive of
  the interpreted kernel compiles on its own)."""
  fn = lambda h, w, c: api.patched_readout(h, w, c, implementation=impl, interpret=True, **kw)

  @functools.partial(jax.jit, compiler_options=CPU_FAST_COMPILE)
  def run(states, weights, c_patches, cotangent):
    out, vjp = jax.vjp(fn, states, weights, c_patches)
    return out, vjp(cotangent)

  return run(states, weights, c_patches, cotangent)


# (grid, cls_index, channels, N, size, batch, block_d or None for the default, reversed
# tokens): rectangular grids (wider and taller), a window larger than the grid, a channel count
# that is not a multiple of the block, N not a power of two, cls first, middle, inside a row and
# last, a grid wider than the 16-row tile minimum. Edge geometries: a 1x1 grid (N = 1, D < block
# and a window past both sides), one row and one column, cls at either end of reversed states
# (its state row at the other end), D split unevenly over blocks of 32 and 64, a width of exactly
# the 16-row tile and the default block config (block_d 128 > D).
CASES = [((3, 4), 6, 20, 16, 5, 2, 16, False), ((2, 3), 0, 16, 12, 3, 2, 16, False),
         ((4, 4), 8, 40, 16, 1, 2, 16, False), ((3, 3), 4, 16, 4, 7, 2, 16, False),
         ((5, 2), 10, 16, 16, 5, 2, 16, False), ((2, 17), 5, 16, 16, 3, 2, 16, False),
         ((1, 1), 1, 8, 1, 3, 1, 16, False), ((1, 5), 0, 8, 2, 3, 1, 16, True),
         ((6, 1), 6, 40, 3, 5, 2, 32, True), ((2, 3), 2, 72, 5, 9, 1, 64, False),
         ((2, 16), 16, 8, 2, 3, 1, None, False), ((3, 17), 51, 8, 3, 5, 1, None, True)]


@pytest.mark.parametrize('grid,cls_index,channels,n_state,size,batch,block_d,reversed_tokens',
                         CASES)
def test_kernel_matches_reference_forward_and_gradients(grid, cls_index, channels, n_state, size,
                                                        batch, block_d, reversed_tokens):
  states, weights, c_patches, cotangent = _inputs(len(grid) + size, batch, grid, channels,
                                                  n_state)
  kw = dict(cls_index=cls_index, grid_size=grid, neighbourhood=size,
            reversed_tokens=reversed_tokens,
            block_config=None if block_d is None else PatchedReadoutBlockConfig(block_d, 4))
  ref, ref_grads = _value_and_grads('xla', states, weights, c_patches, cotangent, **kw)
  out, grads = _value_and_grads('triton', states, weights, c_patches, cotangent, **kw)
  print(f'grid {grid} size {size}: forward rel err {_rel(out, ref):.2e}; gradients '
        + ', '.join(f'{_rel(g, r):.2e}' for g, r in zip(grads, ref_grads)))
  assert out.shape == (batch, grid[0] * grid[1], channels)
  assert _rel(out, ref) < 1e-5
  for name, g, r in zip(('states', 'weights', 'c_patches'), grads, ref_grads):
    assert _rel(g, r) < 1e-5, name
  cls_row = grid[0] * grid[1] - cls_index if reversed_tokens else cls_index  # L - 1 - cls_index
  np.testing.assert_array_equal(np.asarray(grads[0][:, cls_row]), 0.0)  # not a patch


@pytest.mark.parametrize('case', [CASES[0], CASES[6], CASES[8], CASES[11]])
def test_by_state_kernels_match_reference_forward_and_gradients(case):
  """The kernels that walk N with (rows, block_d) tiles (`by_state`): multi-row tiles, a 1 x 1
  grid, reversed tokens, a grid wider than 16 with the default block."""
  grid, cls_index, channels, n_state, size, batch, block_d, reversed_tokens = case
  states, weights, c_patches, cotangent = _inputs(len(grid) + size, batch, grid, channels,
                                                  n_state)
  kw = dict(cls_index=cls_index, grid_size=grid, neighbourhood=size,
            reversed_tokens=reversed_tokens)
  ref, ref_grads = _value_and_grads('xla', states, weights, c_patches, cotangent, **kw)
  block = PatchedReadoutBlockConfig(block_d or 32, 4, by_state=True)
  out, grads = _value_and_grads('triton', states, weights, c_patches, cotangent,
                                block_config=block, **kw)
  assert _rel(out, ref) < 1e-5
  for name, g, r in zip(('states', 'weights', 'c_patches'), grads, ref_grads):
    assert _rel(g, r) < 1e-5, name
  cls_row = grid[0] * grid[1] - cls_index if reversed_tokens else cls_index
  np.testing.assert_array_equal(np.asarray(grads[0][:, cls_row]), 0.0)


@pytest.mark.parametrize('impl', ['xla', 'triton'])
def test_blnd_and_bldn_states_give_the_same_features(impl):
  states, weights, c_patches, _ = _inputs(3, 2, (3, 4), 20, 16)
  kw = dict(cls_index=6, grid_size=(3, 4), neighbourhood=5, implementation=impl, interpret=True,
            block_config=PatchedReadoutBlockConfig(16, 4))
  want = api.patched_readout(states, weights, c_patches, **kw)
  got = api.patched_readout(jnp.swapaxes(states, 2, 3), weights, c_patches,
                            states_layout='blnd', **kw)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match='states_layout'):
    api.patched_readout(states, weights, c_patches, states_layout='nbld', **kw)


@pytest.mark.parametrize('impl', ['xla', 'triton'])
def test_reversed_token_states_give_the_same_features_and_gradients(impl):
  """States in the backward scan's order (no flipped copy) vs flipped ones: same features, and
  the gradient comes back in the order it was given (class-token row zero at its own place)."""
  states, weights, c_patches, g = _inputs(4, 2, (3, 4), 20, 16)
  kw = dict(cls_index=5, grid_size=(3, 4), neighbourhood=3, implementation=impl,
            interpret=True, block_config=PatchedReadoutBlockConfig(16, 4))

  @functools.partial(jax.jit, compiler_options=CPU_FAST_COMPILE)
  def both(states, g):
    want, want_vjp = jax.vjp(lambda h: api.patched_readout(h, weights, c_patches, **kw), states)
    got, got_vjp = jax.vjp(lambda h: api.patched_readout(h, weights, c_patches,
                                                         reversed_tokens=True, **kw),
                           jnp.flip(states, axis=1))
    return want, got, got_vjp(g)[0], want_vjp(g)[0]

  want, got, dh, want_dh = both(states, g)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(dh), np.asarray(jnp.flip(want_dh, axis=1)), rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_array_equal(np.asarray(dh[:, 12 - 5]), 0.0)   # L - 1 - cls_index


def test_reference_equals_a_brute_force_loop():
  states, weights, c_patches, _ = _inputs(0, 1, (3, 4), 3, 2)
  gh, gw, r, cls = 3, 4, 1, 6
  h = np.asarray(reference.drop_class_token(states, cls))
  want = np.zeros((1, gh * gw, 3))
  for tau in range(gh * gw):
    tr, tc = divmod(tau, gw)
    for dr in range(-r, r + 1):
      for dc in range(-r, r + 1):
        k = min(max(tr + dr, 0), gh - 1) * gw + min(max(tc + dc, 0), gw - 1)
        want[0, tau] += float(weights[0, k]) * h[0, k] @ np.asarray(c_patches[0, tau])
  got = api.patched_readout(states, weights, c_patches, cls_index=cls, grid_size=(gh, gw),
                            neighbourhood=3, implementation='xla')
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_class_token_is_removed_at_its_true_index():
  x = jnp.arange(2 * 5).reshape(2, 5)
  np.testing.assert_array_equal(reference.drop_class_token(x, 2), [[0, 1, 3, 4], [5, 6, 8, 9]])


def test_box_sum_matches_replicate_padded_window_sum_on_a_rectangular_grid():
  grid = np.random.default_rng(0).normal(size=(2, 3, 6, 4)).astype(np.float32)
  for size in (3, 5):
    r = size // 2
    padded = np.pad(grid, [(0, 0), (r, r), (r, r), (0, 0)], mode='edge')
    want = sum(padded[:, dy:dy + 3, dx:dx + 6] for dy in range(size) for dx in range(size))
    np.testing.assert_allclose(reference.box_sum(jnp.asarray(grid), size), want, rtol=1e-5,
                               atol=1e-6)


def test_box_sum_rejects_even_sizes():
  with pytest.raises(ValueError, match='odd'):
    reference.box_sum(jnp.zeros((1, 4, 4, 2)), 4)


def test_bad_inputs_are_rejected_with_a_clear_message():
  states, weights, c_patches, _ = _inputs(1, 1, (2, 2), 4, 2)
  call = lambda **kw: api.patched_readout(
      **{'states': states, 'weights': weights, 'c_patches': c_patches, 'cls_index': 2,
         'grid_size': (2, 2), **kw})
  with pytest.raises(ValueError, match='patch grid is 3x2'):
    call(grid_size=(3, 2))
  with pytest.raises(ValueError, match='both >= 1'):
    call(grid_size=(-2, -2))  # the right number of patches, but no grid
  for empty in (dict(states=states[:0], weights=weights[:0], c_patches=c_patches[:0]),
                dict(states=states[..., :0, :])):
    with pytest.raises(ValueError,
                       match="implementation='triton' cannot .*at least one image.*'xla'"):
      call(implementation='triton', interpret=True, **empty)
    assert call(interpret=True, **empty).size == 0  # the default takes XLA for empty inputs
  with pytest.raises(ValueError, match='one entry per patch token'):
    call(weights=weights[:, :3])
  with pytest.raises(ValueError, match='odd positive'):
    call(neighbourhood=4)
  with pytest.raises(ValueError, match='unknown implementation'):
    call(implementation='cuda')
  for cls_index in (5, -1):
    with pytest.raises(ValueError, match='outside the 5 tokens'):
      call(cls_index=cls_index)
  with pytest.raises(ValueError, match=r'expected states \(B, L, D, N\)'):
    call(states=states[0])
  with pytest.raises(ValueError, match="N = 4 from the 'blnd' states"):
    call(states_layout='blnd')  # (B, L, D=4, N=2) states read as (B, L, N, D)
  with pytest.raises(ValueError, match='power of two'):
    PatchedReadoutBlockConfig(48, 4)
  with pytest.raises(ValueError, match='power of two'):
    PatchedReadoutBlockConfig(256, 4)
  with pytest.raises(ValueError, match='num_warps=3'):
    PatchedReadoutBlockConfig(64, 3)


# (grid, class-token index, channels, the launch grid): Vim-S at 224 (one grid row per
# program) and the CIFAR testbed's 8 x 8 grid (two rows per program: 4 programs per column).
LOWERING_CASES = [((14, 14), 98, 768, 'grid_x = 4 : i32, grid_y = 24 : i32, grid_z = 14 : i32'),
                  ((8, 8), 32, 384, 'grid_x = 4 : i32, grid_y = 12 : i32, grid_z = 4 : i32')]


@pytest.mark.parametrize('grid,cls_index,channels,launch', LOWERING_CASES)
def test_kernels_lower_to_triton_for_h100(grid, cls_index, channels, launch):
  """AOT lowering for an abstract H100 on CPU: every kernel (both forms of the forward and the
  backward) reaches Triton (batch 4, blocks of 32 channels)."""
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  patches = grid[0] * grid[1]
  args = (f32(4, patches + 1, 16, channels), f32(4, patches), f32(4, patches, 16))
  static = (cls_index, grid, 5, True, 32, 4)  # reversed tokens: the harder index map
  forwards = [jax.jit(lambda h, w, c, by_state=by_state: pallas_triton.patched_readout(
      h, w, c, *static, by_state, False)) for by_state in (False, True)]
  backward = pallas_triton._backward  # pylint: disable=protected-access
  backwards = [jax.jit(lambda h, w, c, by_state=by_state: backward(
      h, w, c, h[:, 1:, 0, :], *static, by_state, False)) for by_state in (False, True)]
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    with abstract_h100():
      for fn in forwards + backwards:
        text = fn.trace(*args).lower(lowering_platforms=('cuda',)).as_text()
        assert '__gpu$xla.gpu.triton' in text
        assert launch in text     # batch x channel blocks x tiles of grid rows


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a CUDA GPU')
@pytest.mark.parametrize('grid,cls_index,channels,by_state', [
    ((14, 14), 98, 768, False), ((8, 8), 32, 384, False), ((14, 14), 98, 768, True),
    ((8, 8), 32, 384, True)])
def test_kernel_on_gpu_matches_reference(grid, cls_index, channels, by_state):
  """Vim-S at 224 and the CIFAR testbed's grid (two grid rows per program), both forms."""
  states, weights, c_patches, cotangent = _inputs(7, 4, grid, channels, 16)
  kw = dict(cls_index=cls_index, grid_size=grid, neighbourhood=5)
  ref, ref_grads = _value_and_grads('xla', states, weights, c_patches, cotangent, **kw)
  block = PatchedReadoutBlockConfig(32, 4, by_state=by_state)
  fn = lambda h, w, c: api.patched_readout(h, w, c, implementation='triton', block_config=block,
                                           **kw)
  out, vjp = jax.vjp(fn, states, weights, c_patches)
  grads = vjp(cotangent)
  print(f'GPU forward rel err {_rel(out, ref):.2e}; gradients '
        + ', '.join(f'{_rel(g, r):.2e}' for g, r in zip(grads, ref_grads)))
  assert _rel(out, ref) < 1e-5
  for g, r in zip(grads, ref_grads):
    assert _rel(g, r) < 1e-5


def test_default_is_the_kernel_on_gpu_and_xla_elsewhere(monkeypatch):
  for backend, want in (('gpu', 'triton'), ('cpu', 'xla'), ('tpu', 'xla')):
    monkeypatch.setattr(jax, 'default_backend', lambda b=backend: b)
    assert api.DISPATCH.choose(None, 2, 8, 4) == want
    assert api.DISPATCH.choose(None, 0, 8, 4) == 'xla'  # nothing for the kernel to launch


def test_default_block_config_keeps_the_measured_tile_size():
  """16 x 512 fp32 tiles (Vim-S's 14-wide grid, N = 16, block_d 32: the H100's best); other
  grids and state sizes trade channels per program for tile rows, within [16, 128]."""
  cases = {(14, 16): 32, (8, 16): 32, (28, 16): 16, (14, 4): 128, (64, 64): 16, (14, 12): 32}
  for (width, n_state), block_d in cases.items():
    assert default_block_config(width, n_state).block_d == block_d, (width, n_state)
