"""Pallas Triton kernels of the patched readout f(τ) = C_τ · Σ_{k ∈ N(τ)} w_k h(k).

States come in the selective-scan kernel's (B, L, N, D) layout (`states_layout='blnd'`), so
the Gen step hands them over without a transpose; a tile is N rows of `block_d` contiguous
channels.

Why a kernel: memory. The XLA form materialises the weighted and box-filtered states, two
(B, P, D, N) fp32 tensors; this kernel never does (Gen-step peak 1.96 vs 14.98 GiB, Vim-S at 32
images). Each program (one image, `block_d` state channels, `patch_chunk` consecutive patches)
walks its patches and, per patch τ, sums the w_k-weighted (N, block_d) state tiles of its p×p window in registers, then contracts
with C_τ. Those p² tile loads per patch (25 for 5×5) come mostly from L1/L2, which bounds the
kernel: on the H100 it is 1.6-3x slower than the XLA form (NOTES.md), so it is opt-in.

Replicate padding is the clip of the window's row and column: a border patch's window repeats
the edge patches, exactly like the reference's banded matrices. The class token is skipped by
mapping patch p to token t = p + (p >= cls_index), or to row L - 1 - t when the states are in
the backward scan's order (`reversed_tokens`: no flipped copy of the states).

Backward (custom VJP), one kernel, two walks over the program's patch chunk:
  over source patches k:  G_k = Σ_τ m(τ, k) g_τ ⊗ C_τ   (τ in the p×p window around k, m the
                          number of window offsets of τ that clip to k)
                          dh_k = w_k G_k;  dw_k = Σ h_k ⊙ G_k  (partial over this channel block)
  over patches τ:         dC_τ = Σ_d g_τ[d] Σ_{k ∈ N(τ)} w_k h_k[d, :]  (partial)
The channel-block partials of dw and dC are summed in XLA.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels_pallas import _pallas_compat as compat
from kernels_pallas._pallas_compat import pl, plgpu
from kernels_pallas._blocks import next_pow2


class _Geometry:
  """Static geometry: patch grid, window radius, class-token index, tile sizes."""

  def __init__(self, states_shape, grid_size, neighbourhood, cls_index, block_d, reversed_tokens,
               patch_chunk):
    _, length, n_state, channels = states_shape
    self.gh, self.gw = grid_size
    self.r = neighbourhood // 2
    self.cls = cls_index
    self.length, self.reversed = length, reversed_tokens
    self.channels, self.n_state = channels, n_state
    self.block_d, self.n_pad = block_d, max(2, next_pow2(n_state))
    self.patch_chunk = patch_chunk

  @property
  def patches(self) -> int:
    return self.gh * self.gw

  @property
  def chunks(self) -> int:
    return pl.cdiv(self.patches, self.patch_chunk)

  def walk(self, body):
    """Runs body(patch, valid) over this program's chunk of patches; past the grid's end the
    patch is clamped to the last one (loads stay in bounds) and `valid` is False (no stores)."""
    first = pl.program_id(2) * self.patch_chunk

    def step(i, carry):
      patch = first + i
      body(jnp.minimum(patch, self.patches - 1), patch < self.patches)
      return carry

    jax.lax.fori_loop(0, self.patch_chunk, step, 0)

  def offsets(self):
    return [(dr, dc) for dr in range(-self.r, self.r + 1) for dc in range(-self.r, self.r + 1)]

  def row_col(self, patch):
    """(row, column) of a patch index (non-negative: lax.div, no floor-mod fix-ups, which the
    Triton lowering rejects)."""
    row = jax.lax.div(patch, jnp.int32(self.gw))
    return row, patch - row * self.gw

  def token(self, patch):
    """Row of `states` holding a patch (the class token skipped; counted from the end when
    the states are in the backward scan's reversed order)."""
    t = jnp.where(patch >= self.cls, patch + 1, patch)
    return self.length - 1 - t if self.reversed else t

  @property
  def cls_row(self) -> int:
    return self.length - 1 - self.cls if self.reversed else self.cls

  def tile_masks(self):
    d0 = pl.program_id(1) * self.block_d
    d_ok = (d0 + jnp.arange(self.block_d)) < self.channels
    n_ok = jnp.arange(self.n_pad) < self.n_state
    return d0, d_ok, n_ok

  def multiplicity(self, i, j, n):
    """How many offsets o in [-r, r] give clip(i + o, 0, n - 1) == j (scalars)."""
    total = jnp.zeros((), jnp.float32)
    for o in range(-self.r, self.r + 1):
      total += (jnp.clip(i + o, 0, n - 1) == j).astype(jnp.float32)
    return total


def _state_tile(h_ref, b, token, d0, mask, geo: _Geometry):
  """(n_pad, block_d) tile of the (B, L, N, D) states: N rows of contiguous channels."""
  return plgpu.load(h_ref.at[b, token, pl.ds(0, geo.n_pad), pl.ds(d0, geo.block_d)],
                    mask=mask, other=0.0)


def _window_sum(h_ref, w_ref, b, tau, d0, mask, geo: _Geometry):
  """Σ_{k ∈ N(τ)} w_k h_k as an (n_pad, block_d) tile (replicate-padded window)."""
  tr, tc = geo.row_col(tau)
  acc = jnp.zeros((geo.n_pad, geo.block_d), jnp.float32)
  for dr, dc in geo.offsets():
    k = jnp.clip(tr + dr, 0, geo.gh - 1) * geo.gw + jnp.clip(tc + dc, 0, geo.gw - 1)
    acc += w_ref[b, k] * _state_tile(h_ref, b, geo.token(k), d0, mask, geo)
  return acc


def _row(ref, b, p, start, size, ok):
  return plgpu.load(ref.at[b, p, pl.ds(start, size)], mask=ok, other=0.0)


def _forward_kernel(h_ref, w_ref, c_ref, f_ref, *, geo: _Geometry):
  b = pl.program_id(0)
  d0, d_ok, n_ok = geo.tile_masks()
  mask = n_ok[:, None] & d_ok[None, :]

  def body(tau, valid):
    hsum = _window_sum(h_ref, w_ref, b, tau, d0, mask, geo)
    c_tau = _row(c_ref, b, tau, 0, geo.n_pad, n_ok)
    plgpu.store(f_ref.at[b, tau, pl.ds(d0, geo.block_d)], jnp.sum(hsum * c_tau[:, None], axis=0),
                mask=d_ok & valid)

  geo.walk(body)


def _backward_kernel(h_ref, w_ref, c_ref, g_ref, dh_ref, dw_ref, dc_ref, *, geo: _Geometry):
  b, blk = pl.program_id(0), pl.program_id(1)
  d0, d_ok, n_ok = geo.tile_masks()
  mask = n_ok[:, None] & d_ok[None, :]
  # The class token's state is not a patch: its cotangent is 0 (written by the first chunk).
  plgpu.store(dh_ref.at[b, jnp.int32(geo.cls_row), pl.ds(0, geo.n_pad), pl.ds(d0, geo.block_d)],
              jnp.zeros((geo.n_pad, geo.block_d), jnp.float32),
              mask=mask & (pl.program_id(2) == 0))

  def per_source(k, valid):
    kr, kc = geo.row_col(k)
    grad = jnp.zeros((geo.n_pad, geo.block_d), jnp.float32)
    for dr, dc in geo.offsets():
      tr, tc = kr + dr, kc + dc
      inside = (tr >= 0) & (tr < geo.gh) & (tc >= 0) & (tc < geo.gw)
      tr_c, tc_c = jnp.clip(tr, 0, geo.gh - 1), jnp.clip(tc, 0, geo.gw - 1)
      m = (geo.multiplicity(tr_c, kr, geo.gh) * geo.multiplicity(tc_c, kc, geo.gw)
           * inside.astype(jnp.float32))
      tau = tr_c * geo.gw + tc_c
      g_tau = _row(g_ref, b, tau, d0, geo.block_d, d_ok)
      c_tau = _row(c_ref, b, tau, 0, geo.n_pad, n_ok)
      grad += m * (c_tau[:, None] * g_tau[None, :])
    token = geo.token(k)
    h_k = _state_tile(h_ref, b, token, d0, mask, geo)
    plgpu.store(dh_ref.at[b, token, pl.ds(0, geo.n_pad), pl.ds(d0, geo.block_d)],
                w_ref[b, k] * grad, mask=mask & valid)
    plgpu.store(dw_ref.at[b, blk, k], jnp.sum(jnp.sum(h_k * grad, axis=1)), mask=valid)

  def per_patch(tau, valid):
    hsum = _window_sum(h_ref, w_ref, b, tau, d0, mask, geo)
    g_tau = _row(g_ref, b, tau, d0, geo.block_d, d_ok)
    plgpu.store(dc_ref.at[b, blk, tau, pl.ds(0, geo.n_pad)],
                jnp.sum(hsum * g_tau[None, :], axis=1), mask=n_ok & valid)

  geo.walk(per_source)
  geo.walk(per_patch)


def _forward(states, weights, c_patches, cls_index, grid_size, neighbourhood, reversed_tokens,
             block_d, num_warps, patch_chunk, interpret):
  geo = _Geometry(states.shape, grid_size, neighbourhood, cls_index, block_d, reversed_tokens,
                  patch_chunk)
  batch = states.shape[0]
  compat.filter_triton_deprecation()
  return pl.pallas_call(
      functools.partial(_forward_kernel, geo=geo),
      out_shape=jax.ShapeDtypeStruct((batch, geo.patches, geo.channels), jnp.float32),
      grid=(batch, pl.cdiv(geo.channels, block_d), geo.chunks), interpret=interpret,
      name='patched_readout_fwd',
      compiler_params=compat.triton_compiler_params(num_warps, 1),
  )(states, weights, c_patches)


def _backward(states, weights, c_patches, g, cls_index, grid_size, neighbourhood,
              reversed_tokens, block_d, num_warps, patch_chunk, interpret):
  geo = _Geometry(states.shape, grid_size, neighbourhood, cls_index, block_d, reversed_tokens,
                  patch_chunk)
  batch, blocks = states.shape[0], pl.cdiv(geo.channels, block_d)
  compat.filter_triton_deprecation()
  dh, dw, dc = pl.pallas_call(
      functools.partial(_backward_kernel, geo=geo),
      out_shape=[jax.ShapeDtypeStruct(states.shape, jnp.float32),
                 jax.ShapeDtypeStruct((batch, blocks, geo.patches), jnp.float32),
                 jax.ShapeDtypeStruct((batch, blocks, geo.patches, geo.n_state), jnp.float32)],
      grid=(batch, blocks, geo.chunks), interpret=interpret, name='patched_readout_bwd',
      compiler_params=compat.triton_compiler_params(num_warps, 1),
  )(states, weights, c_patches, g)
  return dh, jnp.sum(dw, axis=1), jnp.sum(dc, axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8, 9, 10))
def patched_readout(states, weights, c_patches, cls_index, grid_size, neighbourhood,
                    reversed_tokens, block_d, num_warps, patch_chunk, interpret):
  """(B, P, D) fp32 from fp32 states in the scan kernel's (B, L, N, D) layout, weights (B, P),
  c_patches (B, P, N)."""
  return _forward(states, weights, c_patches, cls_index, grid_size, neighbourhood,
                  reversed_tokens, block_d, num_warps, patch_chunk, interpret)


def _vjp_forward(states, weights, c_patches, *static):
  return patched_readout(states, weights, c_patches, *static), (states, weights, c_patches)


def _vjp_backward(cls_index, grid_size, neighbourhood, reversed_tokens, block_d, num_warps,
                  patch_chunk, interpret, saved, g):
  states, weights, c_patches = saved
  return _backward(states, weights, c_patches, g.astype(jnp.float32), cls_index, grid_size,
                   neighbourhood, reversed_tokens, block_d, num_warps, patch_chunk, interpret)


patched_readout.defvjp(_vjp_forward, _vjp_backward)
