"""Pallas Triton kernel of the mixed-precision GEMM (W4A4 + int8 outliers, W4A8, W8A8).

One program computes a (block_m tokens) x (block_n channels) tile of y. By default (the dense
form) it walks K once with two int8 MMAs per K block on the weight tile already loaded:

  acc_in  += xin_tile @ w_tile                 (int32 accumulate)
  acc_out += xout_tile @ w_tile                (when outliers are given)

The list form (`cfg.dense_outliers_above` > 0, off by default: it lost on every model measured,
mixed_gemm NOTES) takes the outlier product out of the K walk: per tile of block_m tokens,
`reference.outlier_tiles` lists the channels where any of its tokens has a non-zero outlier
code (the union of the refresh windows' outlier sets the tile covers, compacted to the front of
a (tiles, K) index array with its length), and a second loop runs ceil(length /
OUTLIER_CHUNK) narrow dots that gather those activation columns and weight rows
(acc_out += xout[:, idx] @ w[idx, :]), so its cost follows the outlier rate instead of K.
Skipped channels have zero codes in every row of the tile, so the sums are exact. Gathers are
slow next to tile loads, so a tile whose list is longer than `dense_outliers_above` x K walks
densely instead, chosen per tile at run time; both forms are exact.

Hopper has no int4 MMA, so the MMAs multiply int8 codes: activation codes arrive one per byte
(act_quant writes int4 ones so), and an int4 weight is unpacked either in XLA before the call
(one elementwise pass per call, the default) or in the kernel (`MixedGemmBlockConfig.
weights_as_stored`, below). Unpacking by jnp shifts inside the K loop made the W4A4 kernel 3x
slower than the same GEMM on int8 codes (H200, Vim-B in_proj 12608x768x3072, 2026-12-02: 0.288
ms vs 0.097 ms W8A8, cuBLAS bf16 0.102 ms; `mixed_gemm/bench.py`). The epilogue applies the
per-token scales (rows) and the per-channel weight scale (columns) in fp32 and stores bf16/fp32.
A bias is added in the output dtype after that rounding (round, add, round): the bits a separate
add after the GEMM gives, as the model's Linear adds it, without that extra pass over the output
(Vim's dt_proj: a (B, L, 1536) read and write per direction and block).

Weights are stored and passed K-major, (N, K): Hopper's int8 wgmma reads its B operand K-major
from shared memory, and with (K, N) tiles Triton could not feed it directly. Measured on an H200
(`bench/int8_gemm_probe.py`, Vim-B in_proj 12608x768x3072, 2026-12-02): 0.517 ms (K, N) vs 0.181
ms (N, K), cuBLAS bf16 0.212 ms in the same run. So an int8 weight enters as stored, and an int4
one (packed in halves along K: byte j = lanes j and j + K/2, `kernels_pallas.int4`) needs no
transpose either: XLA's unpack is a concatenation of its two nibble planes. With
`weights_as_stored` the kernel reads the packed bytes itself: per K block of block_k lanes it
loads a (block_n, block_k/2) byte tile, unpacks it in registers into the tiles of lanes
[j, j + block_k/2) and [K/2 + j, ...) (inline PTX, four bytes per instruction:
`int4.unpack_nibbles_in_kernel`), and meets each with its own contiguous activation tile: two
dots, no shuffles, and no per-call copy or launch (mixed_gemm NOTES, session 33).

M, N and K tails are masked in the kernel (any M, N, K; masked codes load as 0, which adds
nothing): no XLA pad of the operands before the call (Vim's dt_proj has K = dt_rank = 48). The
grid is (N tiles, M tiles) with the N tile fastest, so the programs in flight share one row
block of activations through L2.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels_pallas import _pallas_compat as compat
from kernels_pallas import int4
from kernels_pallas import rounding
from kernels_pallas._pallas_compat import pl, plgpu
from kernels_pallas.mixed_gemm import reference
from kernels_pallas.mixed_gemm.config import OUTLIER_CHUNK, MixedGemmBlockConfig


def _tile_mask(lines_ok, k_start, width, k: int):
  """(lines, width) mask of a K-major tile: real lines (rows or columns) x lanes inside K;
  a whole K block (K a multiple of the block) needs no lane mask."""
  if k % width == 0:
    return lines_ok[:, None]
  return lines_ok[:, None] & (k_start + jnp.arange(width) < k)[None, :]


def _load_rows(ref, row_start, rows_ok, k_start, width, block_m, k: int):
  """(block_m, width) activation tile at [row_start:, k_start:], rows past M and lanes past K
  read as 0."""
  return plgpu.load(ref.at[pl.ds(row_start, block_m), pl.ds(k_start, width)],
                    mask=_tile_mask(rows_ok, k_start, width, k), other=jnp.int8(0))


def _gemm_kernel(*refs, m: int, n: int, k: int, cfg: MixedGemmBlockConfig, has_outliers: bool,
                 has_bias: bool, accumulators_only: bool, a_period=None, a_floor=None,
                 weight_bits: int = 8, interpret: bool = False):
  refs = list(refs)
  xin_ref, a_scale_ref, w_ref, w_scale_ref = refs[:4]
  refs = refs[4:]
  xout_ref = o_scale_ref = bias_ref = None
  if has_outliers:
    n_list = 2 if cfg.outlier_lists else 0
    xout_ref, o_scale_ref = refs[:2]
    index_ref, count_ref = refs[2:2 + n_list] if n_list else (None, None)
    refs = refs[2 + n_list:]
  if has_bias:
    bias_ref = refs[0]
    refs = refs[1:]
  out_refs = refs

  bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
  col_start = pl.program_id(0) * bn
  row_start = pl.program_id(1) * bm
  rows_ok = row_start + jnp.arange(bm) < m
  cols_ok = col_start + jnp.arange(bn) < n

  def dot(a, b):  # b is a K-major (block_n, K) tile: contract both operands' last axis
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)

  def k_block_sums(kb, x_refs):
    """Each activation ref's int32 contribution from K block kb: the weight tile is loaded
    once and shared by the inlier and the outlier codes (coalesced tile loads, no gathers)."""
    if cfg.weights_as_stored and weight_bits == 4:
      return _packed_weight_sums(kb, x_refs)
    w = plgpu.load(w_ref.at[pl.ds(col_start, bn), pl.ds(kb * bk, bk)],
                   mask=_tile_mask(cols_ok, kb * bk, bk, k), other=jnp.int8(0))
    return [dot(_load_rows(x_ref, row_start, rows_ok, kb * bk, bk, bm, k), w) for x_ref in x_refs]

  def _packed_weight_sums(kb, x_refs):
    """k_block_sums on the packed int4 weight as stored, (N, K/2): block kb is bytes
    [kb * h, (kb + 1) * h), h = block_k / 2, unpacked in registers into the weight's lanes
    [kb * h, ...) (low nibbles) and [K/2 + kb * h, ...) (high nibbles), each met by the
    activation tile of the same lanes."""
    h, half_k = bk // 2, k // 2
    packed = plgpu.load(w_ref.at[pl.ds(col_start, bn), pl.ds(kb * h, h)],
                        mask=_tile_mask(cols_ok, kb * h, h, half_k), other=jnp.int8(0))
    w_low, w_high = int4.unpack_nibbles_in_kernel(packed, interpret)
    x_mask = _tile_mask(rows_ok, kb * h, h, half_k)  # the same lanes of both halves
    load_x = lambda ref, start: plgpu.load(ref.at[pl.ds(row_start, bm), pl.ds(start, h)],
                                           mask=x_mask, other=jnp.int8(0))
    return [dot(load_x(x_ref, kb * h), w_low) + dot(load_x(x_ref, half_k + kb * h), w_high)
            for x_ref in x_refs]

  def body(kb, acc_in):
    (acc,) = k_block_sums(kb, [xin_ref])
    return acc_in + acc

  def dense_body(kb, accs):
    # The outlier codes ride along the K walk as a second dot on the weight tile already
    # loaded.
    acc_in, acc_out = k_block_sums(kb, [xin_ref, xout_ref])
    return accs[0] + acc_in, accs[1] + acc_out

  zeros = jnp.zeros((bm, bn), jnp.int32)
  n_kb = -(-k // bk)  # also with the packed weight: k // 2 bytes in blocks of bk // 2
  if not has_outliers:
    accs = (jax.lax.fori_loop(0, n_kb, body, zeros),)
  elif not cfg.outlier_lists:
    accs = jax.lax.fori_loop(0, n_kb, dense_body, (zeros, zeros))
  else:
    tile = pl.program_id(1)
    count = count_ref[tile]
    rows = row_start + jnp.arange(bm)
    cols = col_start + jnp.arange(bn)

    def outlier_chunk(j, acc_out):
      ok = j * OUTLIER_CHUNK + jnp.arange(OUTLIER_CHUNK) < count
      idx = plgpu.load(index_ref.at[tile, pl.ds(j * OUTLIER_CHUNK, OUTLIER_CHUNK)], mask=ok,
                       other=0)
      xout = plgpu.load(xout_ref.at[rows[:, None], idx[None, :]],
                        mask=rows_ok[:, None] & ok[None, :], other=jnp.int8(0))
      w = plgpu.load(w_ref.at[cols[:, None], idx[None, :]],
                     mask=cols_ok[:, None] & ok[None, :], other=jnp.int8(0))
      return acc_out + dot(xout, w)

    def dense():
      return jax.lax.fori_loop(0, n_kb, dense_body, (zeros, zeros))

    def listed():
      n_chunks = (count + OUTLIER_CHUNK - 1) // OUTLIER_CHUNK
      return (jax.lax.fori_loop(0, n_kb, body, zeros),
              jax.lax.fori_loop(0, n_chunks, outlier_chunk, zeros))

    accs = jax.lax.cond(count > int(cfg.dense_outliers_above * k), dense, listed)

  out_block = (pl.ds(row_start, bm), pl.ds(col_start, bn))
  tile_ok = rows_ok[:, None] & cols_ok[None, :]
  if accumulators_only:
    for ref, acc in zip(out_refs, accs):
      plgpu.store(ref.at[out_block], acc, mask=tile_ok)
    return

  if a_period is None:
    a_scale = plgpu.load(a_scale_ref.at[pl.ds(row_start, bm)], mask=rows_ok, other=0.0)
  else:  # per step: row r is step r mod L of its sample
    a_scale = plgpu.load(a_scale_ref.at[(row_start + jnp.arange(bm)) % a_period], mask=rows_ok,
                         other=0.0)
  if a_floor is not None:
    a_scale = jnp.maximum(a_scale, a_floor)
  w_scale = plgpu.load(w_scale_ref.at[pl.ds(col_start, bn)], mask=cols_ok, other=0.0)
  y = a_scale[:, None] * accs[0].astype(jnp.float32)
  if has_outliers:
    o_scale = plgpu.load(o_scale_ref.at[pl.ds(row_start, bm)], mask=rows_ok, other=0.0)
    y = y + o_scale[:, None] * accs[1].astype(jnp.float32)
  y = y * w_scale[None, :]
  (y_ref,) = out_refs
  if has_bias:  # the bias as stored, rounded to the output dtype here (no pass before the call)
    bias = plgpu.load(bias_ref.at[pl.ds(col_start, bn)], mask=cols_ok, other=0.0)
    y = rounding.rounded_to(y, y_ref.dtype) + rounding.rounded_to(bias, y_ref.dtype)[None, :]
  plgpu.store(y_ref.at[out_block], y.astype(y_ref.dtype), mask=tile_ok)


def _call(x_inlier, a_scale, w, w_scale, x_outlier, o_scale, bias, *, k, weight_bits,
          out_dtype, cfg, interpret, accumulators_only, a_period=None, a_floor=None):
  m, n = x_inlier.shape[0], w.shape[0]
  w_operand = jax.lax.bitcast_convert_type(w, jnp.int8) if w.dtype == jnp.uint8 else w
  if weight_bits == 4 and not cfg.weights_as_stored:
    # Unpacked here, off the kernel's K loop: one elementwise XLA pass, already K-major.
    w_operand = int4.unpack_int4(w_operand, axis=-1)
  has_outliers = x_outlier is not None
  inputs = [x_inlier, a_scale.astype(jnp.float32), w_operand, w_scale.astype(jnp.float32)]
  if has_outliers:
    inputs += [x_outlier, o_scale.astype(jnp.float32)]
    if cfg.outlier_lists:
      inputs += list(reference.outlier_tiles(x_outlier, cfg.block_m))
  if bias is not None:
    inputs.append(bias)
  if accumulators_only:
    out_shape = [jax.ShapeDtypeStruct((m, n), jnp.int32)] * (2 if has_outliers else 1)
  else:
    out_shape = [jax.ShapeDtypeStruct((m, n), out_dtype)]

  kernel = functools.partial(
      _gemm_kernel, m=m, n=n, k=k, cfg=cfg, has_outliers=has_outliers,
      has_bias=bias is not None, accumulators_only=accumulators_only, a_period=a_period,
      a_floor=a_floor, weight_bits=weight_bits, interpret=interpret)
  grid = (pl.cdiv(n, cfg.block_n), pl.cdiv(m, cfg.block_m))
  compat.filter_triton_deprecation()
  outs = pl.pallas_call(
      kernel, out_shape=out_shape, grid=grid, interpret=interpret, name='mixed_gemm',
      compiler_params=compat.triton_compiler_params(cfg.num_warps, cfg.num_stages),
  )(*inputs)
  return outs


@functools.partial(jax.jit, static_argnames=('k', 'weight_bits', 'out_dtype', 'cfg',
                                             'a_period', 'a_floor', 'interpret'))
def mixed_gemm(x_inlier, a_scale, w, w_scale, x_outlier=None, o_scale=None, bias=None, *,
               k: int, weight_bits: int, out_dtype, cfg: MixedGemmBlockConfig,
               a_period: int | None = None, a_floor: float | None = None,
               interpret: bool = False):
  """Fused dequantized GEMM on validated 2-D operands (see `api.mixed_gemm`). Returns (M, N).
  a_period: a_scale holds one scale per step of a_period steps (row r reads r mod a_period);
  a_floor: a_scale raised to it."""
  (y,) = _call(x_inlier, a_scale, w, w_scale, x_outlier, o_scale, bias, k=k,
               weight_bits=weight_bits, out_dtype=out_dtype, cfg=cfg,
               interpret=interpret, accumulators_only=False, a_period=a_period, a_floor=a_floor)
  return y


@functools.partial(jax.jit, static_argnames=('k', 'weight_bits', 'cfg', 'interpret'))
def accumulators(x_inlier, w, x_outlier=None, *, k: int, weight_bits: int,
                 cfg: MixedGemmBlockConfig, interpret: bool = False):
  """The kernel's raw int32 sums (acc_in, acc_out or None): what the exactness tests compare."""
  m = x_inlier.shape[0]
  ones_m = jnp.ones((m,), jnp.float32)
  ones_n = jnp.ones((w.shape[1],), jnp.float32)
  outs = _call(x_inlier, ones_m, w, ones_n, x_outlier, None if x_outlier is None else ones_m,
               None, k=k, weight_bits=weight_bits, out_dtype=jnp.float32,
               cfg=cfg, interpret=interpret, accumulators_only=True)
  return (outs[0], outs[1]) if x_outlier is not None else (outs[0], None)
