"""Block sizes of the mixed-precision GEMM kernel, validated up front.

Triton tiles must be powers of two; the int8 tensor-core MMA needs a reduction of at least 32,
and with int4 weights read as stored the kernel splits each K block into the lanes of the low
and the high nibbles (one dot each), so block_k >= 64.
"""
from __future__ import annotations

import dataclasses

from kernels_pallas._blocks import is_pow2, next_pow2

_VALID_WARPS = (1, 2, 4, 8, 16)
# Shared memory one program may use on sm_90 (H100 / H200: 227 KiB of an SM's 228).
MAX_SHARED_BYTES = 227 * 1024
# Channels per narrow dot of the outlier loop: the int8 MMA's K step (32), so a tile with a
# handful of outlier channels costs one small dot.
OUTLIER_CHUNK = 32
# Which tiles `default_block_config` picks: 1 the per-shape winners of the tile sweep (H100,
# session 29: 2-3 programs per SM for the wide Linears at batch 64; Vim-B W4A4O8 end to end
# 38.19 -> 37.08 ms at batch 64, batch 1 within the spread), 0 one tile for every shape (the H200
# probe of session 7). A module switch so the e2e bench can A/B it on an H200 in one process.
SWEEP_TILES = 1
# Calls of at most this many rows read an int4 weight as stored (`weights_as_stored`): at batch
# 1 the GEMM waits on latency and launches, not on its MMAs, and the per-call XLA pass that
# unpacks the weight is a launch per Linear (96 per Vim-B forward). 0: never (the default until
# an end-to-end A/B on a card picks the rows: `bench/e2e_latency.py --gemm_weights_as_stored=N`;
# the in-kernel unpack costs 1.4-1.6x the K loop's SASS instructions, session 33).
WEIGHTS_AS_STORED_UP_TO_ROWS = 0
# An int4 weight with fewer than this many output or input channels is read as stored at every
# batch (0: never). Measured on one H100 (BENCHMARKS.md session 34, kernel bench, W4A4O8, the
# XLA unpack timed with the call): Vim-B x_proj (N = 80) 0.056 -> 0.037 ms at batch 64 (the
# 64-wide tile runs 198 programs instead of 99 on 132 SMs) and 0.039 -> 0.038 at batch 1;
# dt_proj (K = 48) 0.043 -> 0.041 and 0.045 -> 0.042; the wide Linears were 1.5x slower at
# batch 64 (in_proj 0.149 -> 0.229), so they keep XLA's unpacked copy.
AS_STORED_NARROWER_THAN = 128
AS_STORED_MAX_BLOCK_N = 64
# Calls of more than this many rows into fewer than AS_STORED_NARROWER_THAN output channels
# (Vim's x_proj, N = 80) run 64 x 64 x 128 tiles with 4 warps, an int4 weight unpacked by XLA
# (0: the rules above: 128 x 128 / 8 warps, or 128 x 64 as stored). Tile sweep on device time
# (`kernels_pallas.mixed_gemm.bench --sweep`, H100, session 37), Vim-B x_proj, us: W4A4O8 batch
# 64 29.6 -> 22.6, batch 16 24.4 -> 18.1; W8A8 batch 64 25.0 -> 15.7 (cuBLAS bf16 24.0 / 22.8).
# At batch 1 the as-stored tile stays (14.4 against 13.8, within the spread).
NARROW_N_SMALL_TILE_ABOVE_ROWS = 512


@dataclasses.dataclass(frozen=True)
class MixedGemmBlockConfig:
  """One program's tile: block_m tokens x block_n output channels, K walked in block_k steps."""
  block_m: int = 128
  block_n: int = 128
  block_k: int = 128
  num_warps: int = 8
  num_stages: int = 3
  # A tile whose outlier list is longer than this fraction of K walks its outliers densely
  # along K instead of gathering them (1: always the list). 0 (the default) builds no lists
  # at all and always walks densely: building them (a sort and a reduce over the outlier codes,
  # 2.9 of 46.8 ms of a Vim-B W4A4O8 forward on an H200, 2026-12-02) cost more than the list
  # ever saved in the GEMM (the dense walk was as fast or faster at 2 % outliers, 6 % slower
  # at 0.1 %; BENCHMARKS.md session 8). Lists may pay off on models whose outliers sit in a few
  # persistent channels; measure with `mixed_gemm/bench.py --outlier_frac`.
  dense_outliers_above: float = 0.0
  # Read an int4 weight as stored (K-major, packed in halves along K) instead of the unpacked
  # copy XLA makes per call: each (block_n, block_k / 2) byte tile is unpacked in registers by
  # inline PTX into the lanes of its low and its high nibbles, two dots per K block. More
  # instructions per K step (the unpack, and the tile's trip through shared memory for the MMA)
  # but no copy and no extra launch (`WEIGHTS_AS_STORED_UP_TO_ROWS`). Dense outliers only (no
  # lists). An int8 weight is always read as stored.
  weights_as_stored: bool = False

  def shared_bytes(self, outliers: bool) -> int:
    """Shared memory of the kernel's pipelined int8 tiles: num_stages x (the codes' block_m x
    block_k, the weight's block_k x block_n and, with outliers, the outlier codes' block_m x
    block_k). What Triton 3.9 allocates for sm_90 at every tile checked (session 24,
    `bench/triton_compile_time.py`: e.g. 128 x 128 x 128, 3 stages: 144 KiB)."""
    per_stage = self.block_m * self.block_k * (2 if outliers else 1) + self.block_k * self.block_n
    return self.num_stages * per_stage

  def check_shared_memory(self, outliers: bool) -> None:
    """A tile whose stages exceed MAX_SHARED_BYTES cannot launch on an H100/H200; say so here
    rather than as Triton's out-of-resource error at the first call on a card."""
    need = self.shared_bytes(outliers)
    if need > MAX_SHARED_BYTES:
      raise ValueError(
          f'MixedGemmBlockConfig{(self.block_m, self.block_n, self.block_k)} with '
          f'{self.num_stages} stages needs {need // 1024} KiB of shared memory'
          f'{" (with the outlier codes)" if outliers else ""}, above the '
          f'{MAX_SHARED_BYTES // 1024} KiB a program may use on sm_90; lower num_stages or '
          'block_k.')

  @property
  def outlier_lists(self) -> bool:
    """Whether the wrapper builds per-tile outlier lists (see `dense_outliers_above`)."""
    return self.dense_outliers_above > 0.0

  def __post_init__(self):
    for name in ('block_m', 'block_n', 'block_k'):
      value = getattr(self, name)
      if not isinstance(value, int) or not is_pow2(value) or value < 16:
        raise ValueError(f'MixedGemmBlockConfig.{name}={value!r}: must be a power of two >= 16 '
                         '(Triton tiles are powers of two; the MMA needs 16 rows/cols).')
    if self.block_k < 64:
      raise ValueError(f'MixedGemmBlockConfig.block_k={self.block_k}: must be >= 64 (int8 MMA '
                       'needs K >= 32 per dot, and int4 operands are split into two K/2 halves).')
    if self.num_warps not in _VALID_WARPS:
      raise ValueError(f'MixedGemmBlockConfig.num_warps={self.num_warps}: choose one of '
                       f'{_VALID_WARPS}.')
    if not 0.0 <= self.dense_outliers_above <= 1.0:
      raise ValueError(f'MixedGemmBlockConfig.dense_outliers_above={self.dense_outliers_above!r}:'
                       ' must be a fraction of K in [0, 1].')
    if self.weights_as_stored and self.outlier_lists:
      raise ValueError('MixedGemmBlockConfig: weights_as_stored walks the outliers densely; set '
                       'dense_outliers_above=0 with it (or read K-major weights for the lists).')
    if not isinstance(self.num_stages, int) or self.num_stages < 1:
      raise ValueError(f'MixedGemmBlockConfig.num_stages={self.num_stages!r}: must be an int >= 1.')


def default_block_config(m: int, n: int, k: int, weight_bits: int = 4) -> MixedGemmBlockConfig:
  """The measured best tile for (M, N, K), shrunk for tiny problems: the sweep's per-shape
  rule (`_sweep_tile`) while SWEEP_TILES is on, else `_one_tile`; a call of at most
  WEIGHTS_AS_STORED_UP_TO_ROWS rows, or a weight narrower than AS_STORED_NARROWER_THAN, reads
  its int4 weight as stored (an int8 weight always is); except that a call of more than
  NARROW_N_SMALL_TILE_ABOVE_ROWS rows into fewer than AS_STORED_NARROWER_THAN channels runs a
  64 x 64 tile on the unpacked weight.

  From the H200 probe of K-major int8 GEMMs (`bench/int8_gemm_probe.py`, 2026-12-02): at
  M = 64 x 197 tokens 128 x 128 x 128 with 8 warps beat every other tile at Vim-B in_proj and
  out_proj (0.181 / 0.144 ms; 64 x 128 x 256 and 128 x 256 x 128 were 20-55 % slower); at batch 1
  (M = 197) 64 x 128 x 256 with 4 warps was best (0.073 ms). block_k is the preferred size when
  it divides K, else the largest of 256/128/64 that does; a K that none divides (Vim's dt_proj,
  K = dt_rank) runs 64-wide blocks, the last one masked in the kernel.
  """
  small = m <= 512
  if 0 < NARROW_N_SMALL_TILE_ABOVE_ROWS < m and n < AS_STORED_NARROWER_THAN:
    return MixedGemmBlockConfig(64, _fit(64, n), _dividing_block_k(k, (128, 256, 64)), 4, 3)
  tile = _sweep_tile(m, n, k, small) if SWEEP_TILES else _one_tile(m, n, k, small)
  if weight_bits == 4 and (m <= WEIGHTS_AS_STORED_UP_TO_ROWS
                           or min(n, k) < AS_STORED_NARROWER_THAN):
    return reading_weights_as_stored(tile)
  return tile


def reading_weights_as_stored(tile: MixedGemmBlockConfig) -> MixedGemmBlockConfig:
  """`tile` with `weights_as_stored`, narrowed to AS_STORED_MAX_BLOCK_N output channels: with
  128 the two int32 accumulators and the unpacked weight tile need more than 255 registers and
  spill (sm_90 SASS, session 33: in_proj at batch 1, 64 x 128 x 256 spills; 64 x 64 x 256
  holds 213 registers and no local memory)."""
  return dataclasses.replace(tile, block_n=min(tile.block_n, AS_STORED_MAX_BLOCK_N),
                             weights_as_stored=True)


def _fit(block: int, size: int) -> int:
  """A tile side of at most `block`, shrunk to the power of two (>= 16) that covers `size`."""
  return min(block, max(16, next_pow2(size)))


def _dividing_block_k(k: int, order: tuple[int, ...]) -> int:
  """The first block_k of `order` that divides K, else 64 (the last block masked)."""
  return next((bk for bk in order if k % bk == 0), 64)


def _one_tile(m: int, n: int, k: int, small: bool) -> MixedGemmBlockConfig:
  """The H200 probe's tile for every shape (SWEEP_TILES off)."""
  block_k = _dividing_block_k(k, (256 if small else 128, 256, 128, 64))
  block_m = _fit(64 if small else 128, m)
  block_n = _fit(128, n)
  num_warps = 8 if block_m * block_n >= 128 * 128 else 4
  return MixedGemmBlockConfig(block_m=block_m, block_n=block_n, block_k=block_k,
                              num_warps=num_warps, num_stages=3)


def _sweep_tile(m: int, n: int, k: int, small: bool) -> MixedGemmBlockConfig:
  """The tile sweep's winners at Vim-B's Linears (`python -m kernels_pallas.mixed_gemm.bench
  --sweep --shapes=vim_b`, H100, session 29), as a rule of (M, N, K). Batch 64 (M = 12608):
  in_proj and out_proj 64 x 128 x 128 / 4 warps (0.151 / 0.076 ms against 0.195 / 0.095 with
  128 x 128 x 128 / 8), dt_proj (K = 48) 64 x 64 x 128 / 4 (0.051 against 0.079), x_proj
  (N = 80) 128 x 128 x 128 / 8. Batch 1 (M = 197): in_proj 64 x 128 x 256 / 4, the narrower
  ones 64 x 64 x 256 / 4 with 4 stages (out_proj 0.070 against 0.078, x_proj 0.041 against
  0.058, dt_proj 0.045 against 0.064)."""
  fit_m = lambda b: _fit(b, m)
  fit_n = lambda b: _fit(b, n)
  if small:
    wide = n >= 3072
    return MixedGemmBlockConfig(fit_m(64), fit_n(128 if wide else 64), 256, 4,
                                3 if wide else 4)
  if k < 128:
    return MixedGemmBlockConfig(fit_m(64), fit_n(64), 128, 4, 3)
  block_k = _dividing_block_k(k, (128, 256, 64))
  if n >= 512:
    return MixedGemmBlockConfig(fit_m(64), fit_n(128), block_k, 4, 3)
  return MixedGemmBlockConfig(fit_m(128), fit_n(128), block_k, 8, 3)
