"""Pallas Triton kernels of the patched readout f(τ) = C_τ · Σ_{k ∈ N(τ)} w_k h(k).

States come in the selective-scan kernel's (B, L, N, D) layout (`states_layout='blnd'`), so
the Gen step hands them over without a transpose; the kernels view them as (B, L, N·D) and a
program's tile is one patch-grid row: (grid width, N·block_d), or, on grids at most half as wide
as Triton's smallest matmul dimension (16), as many consecutive rows as fit in 16 tile rows (an
8 x 8 grid: two rows per program), so no tile is mostly padding and each loaded state row
serves several output rows.

Why row tiles: the window sum is separable. With M the replicate-padded band matrix of one
axis (`reference.replicate_window_matrix`), Σ_{k ∈ N(τ)} w_k h(k) = (M_rows ⊗ M_cols)(w·h).
One program per (image, channel block, grid row r) sums the p weighted rows r-p//2 .. r+p//2
(clipped: replicate padding) and applies M_cols (block-diagonal over the rows of a multi-row
tile) as one small matmul on the row tile, so each
state element is loaded p times (mostly from L2) instead of p² times as a per-patch window
walk needs; the first kernel of this op did that walk and was L1/L2-bound, 1.6-3x slower than
XLA (NOTES.md). The matmul is fp32 (IEEE, no TF32): M holds small integers, the states keep
every bit.

Backward (custom VJP), one kernel, program per (image, channel block, grid row r):
  G_k = Σ_τ m(τ, k) C_τ ⊗ g_τ for the sources k of row r: (M_rowsᵀ ⊗ M_colsᵀ) applied to the
      rank-1 tiles C_τ ⊗ g_τ (built from C and g, no state loads): a weighted sum of p rows,
      then M_colsᵀ as a matmul
  dh_k = w_k G_k;  dw_k = Σ h_k ⊙ G_k (partial over this channel block)
  dC_τ = Σ_d g_τ[d] P_τ[:, d] for the patches τ of row r, P the forward's window sums
      (recomputed; partial over this channel block)
The channel-block partials of dw and dC are summed in XLA.

The class token has no grid position: patch p sits at token t = p + (p >= cls_index), or at
row L - 1 - t when the states are in the backward scan's order (`reversed_tokens`: no flipped
copy of the states); the index arrays of the row loads do that mapping.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas import _pallas_compat as compat
from kernels_pallas._pallas_compat import pl, plgpu
from kernels_pallas._blocks import next_pow2
from kernels_pallas.patched_readout import reference

_MIN_DOT = 16  # Triton's smallest matmul dimension
# IEEE fp32 matmul: Triton's default for fp32 is TF32 (measured 2e-4 relative error on an H100).
_FP32 = jax.lax.Precision.HIGHEST


class _Geometry:
  """Static geometry (patch grid, window radius, class token, tile sizes) and the index arrays
  of a program's row tiles."""

  def __init__(self, states_shape, grid_size, neighbourhood, cls_index, block_d, reversed_tokens):
    _, length, n_state, channels = states_shape
    self.gh, self.gw = grid_size
    self.r = neighbourhood // 2
    self.cls = cls_index
    self.length, self.reversed = length, reversed_tokens
    self.channels, self.n_state = channels, n_state
    self.block_d, self.n_pad = block_d, max(2, next_pow2(n_state))
    self.rows_per_tile = max(1, min(_MIN_DOT // self.gw, self.gh))   # grid rows per program
    self.tiles = -(-self.gh // self.rows_per_tile)
    # the tile's rows (one per grid cell of its grid rows), padded to a matmul dimension
    self.w_pad = max(_MIN_DOT, next_pow2(self.gw * self.rows_per_tile))
    self.width = self.n_pad * block_d                # the tile's columns: (n, d) pairs

  @property
  def num_patches(self) -> int:
    return self.gh * self.gw

  def token(self, patch):
    """Row of `states` holding each patch (the class token skipped; counted from the end when
    the states are in the backward scan's reversed order)."""
    t = jnp.where(patch >= self.cls, patch + 1, patch)
    return self.length - 1 - t if self.reversed else t

  @property
  def cls_row(self) -> int:
    return self.length - 1 - self.cls if self.reversed else self.cls

  def cells(self, tile):
    """Grid row and column of each row of tile `tile` (clamped into the grid) and which of them
    are real cells: tile row i is column i % gw of grid row tile * rows_per_tile + i // gw."""
    i = jnp.arange(self.w_pad)
    sub = jax.lax.div(i, jnp.int32(self.gw))
    row = tile * self.rows_per_tile + sub
    ok = (sub < self.rows_per_tile) & (row < self.gh)
    return jnp.minimum(row, self.gh - 1), i - sub * self.gw, ok

  def patches(self, rows, cols):
    return rows * self.gw + cols

  def state_index(self):
    """The N axis padded to a power of two, and which entries exist."""
    n = jnp.arange(self.n_pad)
    return n, n < self.n_state

  def channel_block(self):
    """This program's `block_d` channels and which of them exist."""
    channel = pl.program_id(1) * self.block_d + jnp.arange(self.block_d)
    return channel, channel < self.channels

  def lanes(self):
    """For each tile column j = n * block_d + d: state index n, channel d0 + d, the flat
    (n, channel) offset into the (N·D) axis, and validity masks."""
    d0 = pl.program_id(1) * self.block_d
    j = jnp.arange(self.width)
    n = jax.lax.div(j, jnp.int32(self.block_d))
    channel = d0 + j - n * self.block_d
    n_ok, d_ok = n < self.n_state, channel < self.channels
    return n, channel, n * self.channels + channel, n_ok & d_ok


def _state_tile(h_ref, b, patches, ok, geo: _Geometry):
  """(w_pad, width) tile of the states of `patches`; rows not `ok` and padding lanes are 0."""
  _, _, flat, lane_ok = geo.lanes()
  return _by_patch(h_ref, b, geo.token(patches), ok, flat, lane_ok)


def _by_patch(ref, b, patches, col_ok, index, index_ok):
  """ref[b, patches[i], index[j]] as a (w_pad, len(index)) tile (0 where masked)."""
  return plgpu.load(ref.at[b, patches[:, None], index[None, :]],
                    mask=col_ok[:, None] & index_ok[None, :], other=0.0)


def _window_rows(h_ref, w_ref, mc_ref, b, tile, geo: _Geometry):
  """P for the patches of tile `tile`: Σ over the clipped window rows of the weighted state
  rows, then the column window as a matmul with M_cols. (w_pad, width)."""
  rows, cols, ok = geo.cells(tile)
  acc = jnp.zeros((geo.w_pad, geo.width), jnp.float32)
  for dr in range(-geo.r, geo.r + 1):
    patches = geo.patches(jnp.clip(rows + dr, 0, geo.gh - 1), cols)
    w = plgpu.load(w_ref.at[b, patches], mask=ok, other=0.0)
    acc += w[:, None] * _state_tile(h_ref, b, patches, ok, geo)
  return jnp.dot(mc_ref[...], acc, precision=_FP32, preferred_element_type=jnp.float32)


def _or_past_end(index, ok, size):
  """Store indices with every masked entry moved past the end of its axis. The GPU never
  touches masked addresses, but the interpreter writes masked entries back (with their old
  value) and the tiles repeat the edge column: a repeat inside the array would race with the
  real write, one past the end is dropped."""
  return jnp.where(ok, index, size)


def _split_n(tile, geo: _Geometry):
  """(w_pad, n_pad * block_d) -> (w_pad, n_pad, block_d)."""
  return tile.reshape(geo.w_pad, geo.n_pad, geo.block_d)


def _store_features(f_ref, b, patches, ok, value, geo: _Geometry):
  """f[b, patches, this program's channels] = value (rows not `ok`, channels past D dropped)."""
  channel, d_ok = geo.channel_block()
  plgpu.store(f_ref.at[b, _or_past_end(patches, ok, geo.num_patches)[:, None],
                      _or_past_end(channel, d_ok, geo.channels)[None, :]],
              value, mask=ok[:, None] & d_ok[None, :])


def _forward_kernel(h_ref, w_ref, c_ref, mc_ref, f_ref, *, geo: _Geometry):
  b, tile = pl.program_id(0), pl.program_id(2)
  rows, cols, ok = geo.cells(tile)
  patches = geo.patches(rows, cols)
  hsum = _split_n(_window_rows(h_ref, w_ref, mc_ref, b, tile, geo), geo)
  c_row = _by_patch(c_ref, b, patches, ok, *geo.state_index())
  _store_features(f_ref, b, patches, ok, jnp.sum(hsum * c_row[:, :, None], axis=1), geo)


def _window_sources(w_ref, b, rows, cols, ok, geo: _Geometry):
  """Per window offset: the state rows (tokens) of the clipped window row and their weights w,
  loaded once for every state index n of the by-state kernels."""
  sources = []
  for dr in range(-geo.r, geo.r + 1):
    source = geo.patches(jnp.clip(rows + dr, 0, geo.gh - 1), cols)
    sources.append((geo.token(source), plgpu.load(w_ref.at[b, source], mask=ok, other=0.0)))
  return sources


def _forward_by_state_kernel(h_ref, w_ref, c_ref, mc_ref, f_ref, *, geo: _Geometry):
  """The forward with one (rows, block_d) tile per state index n instead of one (rows,
  N·block_d) tile: P_n = M_cols Σ_rows w·h_n, then f += C[:, n] P_n, all in one loop over n.
  A program holds a sixteenth of the registers (more programs resident, more loads in flight),
  each load is a contiguous run of block_d channels, and no reshape splits N off a tile."""
  b, tile = pl.program_id(0), pl.program_id(2)
  rows, cols, ok = geo.cells(tile)
  patches = geo.patches(rows, cols)
  channel, d_ok = geo.channel_block()
  sources = _window_sources(w_ref, b, rows, cols, ok, geo)
  tile_ok = ok[:, None] & d_ok[None, :]
  out = jnp.zeros((geo.w_pad, geo.block_d), jnp.float32)
  for n in range(geo.n_state):
    acc = jnp.zeros((geo.w_pad, geo.block_d), jnp.float32)
    for tokens, w in sources:
      h = plgpu.load(h_ref.at[b, tokens[:, None], (n * geo.channels + channel)[None, :]],
                     mask=tile_ok, other=0.0)
      acc += w[:, None] * h
    c_n = plgpu.load(c_ref.at[b, patches, n], mask=ok, other=0.0)
    out += c_n[:, None] * jnp.dot(mc_ref[...], acc, precision=_FP32,
                                  preferred_element_type=jnp.float32)
  _store_features(f_ref, b, patches, ok, out, geo)


def _window_targets(mr_ref, rows, cols, ok, geo: _Geometry):
  """Per window offset: the patches τ of the window row whose clipped window reaches each tile
  row, and their weights M_rows[τ_r, row] (0 past the grid's edge): the backward's sources."""
  targets = []
  for dr in range(-geo.r, geo.r + 1):
    tr = rows + dr
    inside = (tr >= 0) & (tr < geo.gh)
    tr = jnp.clip(tr, 0, geo.gh - 1)
    m = plgpu.load(mr_ref.at[tr * geo.gh + rows], mask=ok & inside, other=0.0)
    targets.append((geo.patches(tr, cols), m))
  return targets


def _backward_kernel(h_ref, w_ref, c_ref, g_ref, mr_ref, mc_ref, mct_ref, dh_ref, dw_ref, dc_ref,
                     *, geo: _Geometry):
  b, blk, tile = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  n_of, channel, flat, lane_ok = geo.lanes()
  flat_out = _or_past_end(flat, lane_ok, geo.n_state * geo.channels)
  # The class token's state is not a patch: its cotangent is 0 (written by tile 0's programs).
  plgpu.store(dh_ref.at[b, jnp.int32(geo.cls_row), flat_out],
              jnp.zeros((geo.width,), jnp.float32), mask=lane_ok & (tile == 0))

  # G for the sources of this tile: the rank-1 tiles C_τ ⊗ g_τ of the window rows τ_r whose
  # clipped window reaches each source's row, weighted by M_rows[τ_r, row], then M_colsᵀ.
  rows, cols, ok = geo.cells(tile)
  acc = jnp.zeros((geo.w_pad, geo.width), jnp.float32)
  for patches, m in _window_targets(mr_ref, rows, cols, ok, geo):
    c_x = _by_patch(c_ref, b, patches, ok, n_of, lane_ok)
    g_x = _by_patch(g_ref, b, patches, ok, channel, lane_ok)
    acc += m[:, None] * (c_x * g_x)
  grad = jnp.dot(mct_ref[...], acc, precision=_FP32, preferred_element_type=jnp.float32)

  patches = geo.patches(rows, cols)
  w_row = plgpu.load(w_ref.at[b, patches], mask=ok, other=0.0)
  tile_ok = ok[:, None] & lane_ok[None, :]
  tokens_out = _or_past_end(geo.token(patches), ok, geo.length)
  plgpu.store(dh_ref.at[b, tokens_out[:, None], flat_out[None, :]], w_row[:, None] * grad,
              mask=tile_ok)
  h_row = _state_tile(h_ref, b, patches, ok, geo)
  patches_out = _or_past_end(patches, ok, geo.num_patches)
  plgpu.store(dw_ref.at[b, blk, patches_out], jnp.sum(h_row * grad, axis=1), mask=ok)

  hsum = _split_n(_window_rows(h_ref, w_ref, mc_ref, b, tile, geo), geo)
  g_row = _by_patch(g_ref, b, patches, ok, *geo.channel_block())
  n, n_ok = geo.state_index()
  plgpu.store(dc_ref.at[b, blk, patches_out[:, None], _or_past_end(n, n_ok, geo.n_state)[None, :]],
              jnp.sum(hsum * g_row[:, None, :], axis=2), mask=ok[:, None] & n_ok[None, :])


def _backward_by_state_kernel(h_ref, w_ref, c_ref, g_ref, mr_ref, mc_ref, mct_ref, dh_ref, dw_ref,
                              dc_ref, *, geo: _Geometry):
  """`_backward_kernel` walking the N state indices with (rows, block_d) tiles, as
  `_forward_by_state_kernel` does: per n, G_n = M_colsᵀ Σ_rows m C_n ⊗ g, dh_n = w G_n,
  dw += Σ h_n ⊙ G_n, dC[:, n] = Σ_d g ⊙ P_n (P_n the forward's window sum, recomputed)."""
  b, blk, tile = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  channel, d_ok = geo.channel_block()
  rows, cols, ok = geo.cells(tile)
  patches = geo.patches(rows, cols)
  tokens = geo.token(patches)
  tile_ok = ok[:, None] & d_ok[None, :]
  n_all = jnp.arange(geo.n_pad)
  # The class token's state is not a patch: its cotangent is 0 (written by tile 0's programs).
  cls_ok = (n_all[:, None] < geo.n_state) & d_ok[None, :] & (tile == 0)
  plgpu.store(dh_ref.at[b, jnp.int32(geo.cls_row),
                        _or_past_end(n_all[:, None] * geo.channels + channel[None, :], cls_ok,
                                     geo.n_state * geo.channels)],
              jnp.zeros((geo.n_pad, geo.block_d), jnp.float32), mask=cls_ok)

  # What every n reuses: the window rows' weights M_rows[τ_r, row] times their cotangents g
  # (for G), and their state rows' weights w (for P), loaded once.
  targets = [(target, m[:, None] * plgpu.load(g_ref.at[b, target[:, None], channel[None, :]],
                                              mask=tile_ok, other=0.0))
             for target, m in _window_targets(mr_ref, rows, cols, ok, geo)]
  sources = _window_sources(w_ref, b, rows, cols, ok, geo)
  w_row = plgpu.load(w_ref.at[b, patches], mask=ok, other=0.0)
  g_row = plgpu.load(g_ref.at[b, patches[:, None], channel[None, :]], mask=tile_ok, other=0.0)
  tokens_out = _or_past_end(tokens, ok, geo.length)
  patches_out = _or_past_end(patches, ok, geo.num_patches)
  dw = jnp.zeros((geo.w_pad,), jnp.float32)
  for n in range(geo.n_state):
    lanes = n * geo.channels + channel
    acc = jnp.zeros((geo.w_pad, geo.block_d), jnp.float32)
    for target, mg in targets:
      acc += plgpu.load(c_ref.at[b, target, n], mask=ok, other=0.0)[:, None] * mg
    grad = jnp.dot(mct_ref[...], acc, precision=_FP32, preferred_element_type=jnp.float32)
    plgpu.store(dh_ref.at[b, tokens_out[:, None],
                          _or_past_end(lanes, d_ok, geo.n_state * geo.channels)[None, :]],
                w_row[:, None] * grad, mask=tile_ok)
    window = jnp.zeros((geo.w_pad, geo.block_d), jnp.float32)
    for i, (source_tokens, w) in enumerate(sources):
      h = plgpu.load(h_ref.at[b, source_tokens[:, None], lanes[None, :]], mask=tile_ok, other=0.0)
      window += w[:, None] * h
      if i == geo.r:   # the tile's own rows (dr = 0): h_n for dw
        dw += jnp.sum(h * grad, axis=1)
    p_n = jnp.dot(mc_ref[...], window, precision=_FP32, preferred_element_type=jnp.float32)
    plgpu.store(dc_ref.at[b, blk, patches_out, n], jnp.sum(p_n * g_row, axis=1), mask=ok)
  plgpu.store(dw_ref.at[b, blk, patches_out], dw, mask=ok)


def _band(n: int, size: int, pad: int, copies: int = 1) -> jax.Array:
  """M of one grid axis (replicate-padded window), `copies` times on the diagonal (one per grid
  row of a multi-row tile), zero-padded to (pad, pad)."""
  m = np.kron(np.eye(copies, dtype=np.float32), reference.replicate_window_matrix(n, size))
  return jnp.pad(jnp.asarray(m), ((0, pad - m.shape[0]), (0, pad - m.shape[1])))


def _flat(states):
  return states.reshape(states.shape[:2] + (-1,))


def _forward(states, weights, c_patches, cls_index, grid_size, neighbourhood, reversed_tokens,
             block_d, num_warps, by_state, interpret):
  geo = _Geometry(states.shape, grid_size, neighbourhood, cls_index, block_d, reversed_tokens)
  batch = states.shape[0]
  compat.filter_triton_deprecation()
  return pl.pallas_call(
      functools.partial(_forward_by_state_kernel if by_state else _forward_kernel, geo=geo),
      out_shape=jax.ShapeDtypeStruct((batch, geo.num_patches, geo.channels), jnp.float32),
      grid=(batch, pl.cdiv(geo.channels, block_d), geo.tiles), interpret=interpret,
      name='patched_readout_fwd',
      compiler_params=compat.triton_compiler_params(num_warps, 1),
  )(_flat(states), weights, c_patches, _band(geo.gw, neighbourhood, geo.w_pad, geo.rows_per_tile))


def _backward(states, weights, c_patches, g, cls_index, grid_size, neighbourhood,
              reversed_tokens, block_d, num_warps, by_state, interpret):
  geo = _Geometry(states.shape, grid_size, neighbourhood, cls_index, block_d, reversed_tokens)
  batch, blocks = states.shape[0], pl.cdiv(geo.channels, block_d)
  mc = _band(geo.gw, neighbourhood, geo.w_pad, geo.rows_per_tile)
  compat.filter_triton_deprecation()
  dh, dw, dc = pl.pallas_call(
      functools.partial(_backward_by_state_kernel if by_state else _backward_kernel, geo=geo),
      out_shape=[jax.ShapeDtypeStruct(_flat(states).shape, jnp.float32),
                 jax.ShapeDtypeStruct((batch, blocks, geo.num_patches), jnp.float32),
                 jax.ShapeDtypeStruct((batch, blocks, geo.num_patches, geo.n_state), jnp.float32)],
      grid=(batch, blocks, geo.tiles), interpret=interpret, name='patched_readout_bwd',
      compiler_params=compat.triton_compiler_params(num_warps, 1),
  )(_flat(states), weights, c_patches, g, _band(geo.gh, neighbourhood, geo.gh).reshape(-1), mc,
    mc.T)
  return dh.reshape(states.shape), jnp.sum(dw, axis=1), jnp.sum(dc, axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8, 9, 10))
def patched_readout(states, weights, c_patches, cls_index, grid_size, neighbourhood,
                    reversed_tokens, block_d, num_warps, by_state, interpret):
  """(B, P, D) fp32 from fp32 states in the scan kernel's (B, L, N, D) layout, weights (B, P),
  c_patches (B, P, N); `by_state`: both kernels walk N with (rows, block_d) tiles."""
  return _forward(states, weights, c_patches, cls_index, grid_size, neighbourhood,
                  reversed_tokens, block_d, num_warps, by_state, interpret)


def _vjp_forward(states, weights, c_patches, *static):
  return patched_readout(states, weights, c_patches, *static), (states, weights, c_patches)


def _vjp_backward(cls_index, grid_size, neighbourhood, reversed_tokens, block_d, num_warps,
                  by_state, interpret, saved, g):
  states, weights, c_patches = saved
  return _backward(states, weights, c_patches, g.astype(jnp.float32), cls_index, grid_size,
                   neighbourhood, reversed_tokens, block_d, num_warps, by_state, interpret)


patched_readout.defvjp(_vjp_forward, _vjp_backward)
