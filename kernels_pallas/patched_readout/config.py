"""Launch settings of the patched-readout kernels, validated up front.

One program owns one image, a block of `block_d` state channels and one patch-grid row (on
grids of at most 8 columns, as many rows as fit in 16 tile rows); its tiles are (grid width, or
those rows' cells, padded to >= 16, N·block_d) fp32, so block_d sets the registers a
program needs (Vim-S, N = 16: 16 × 512 floats per tile at block_d = 32, 64 per thread at 4 warps).
`default_block_config` keeps that tile size for other grids and state sizes.
"""
from __future__ import annotations

import dataclasses

from kernels_pallas._blocks import is_pow2, next_pow2

_VALID_WARPS = (1, 2, 4, 8)
# The kernels by state index (`PatchedReadoutBlockConfig.by_state`) by default: off until timed
# on a card (`bench/gen_bench.py --readout_by_state`).
BY_STATE = False


@dataclasses.dataclass(frozen=True)
class PatchedReadoutBlockConfig:
  """block_d: channels per program (power of two, 16..128); num_warps: warps per program;
  by_state: the kernels walk the N state indices with (rows, block_d) tiles instead of holding
  one (rows, N·block_d) tile (None -> BY_STATE; `walks_by_state`)."""
  block_d: int = 32
  num_warps: int = 4
  by_state: bool | None = None

  @property
  def walks_by_state(self) -> bool:
    return BY_STATE if self.by_state is None else self.by_state

  def __post_init__(self):
    bd = self.block_d
    if not isinstance(bd, int) or not is_pow2(bd) or not 16 <= bd <= 128:
      raise ValueError(f'PatchedReadoutBlockConfig.block_d={self.block_d!r}: must be a power of '
                       'two in [16, 128].')
    if self.num_warps not in _VALID_WARPS:
      raise ValueError(f'PatchedReadoutBlockConfig.num_warps={self.num_warps!r}: choose one of '
                       f'{_VALID_WARPS}.')
    if self.by_state is not None and not isinstance(self.by_state, bool):
      raise ValueError(f'PatchedReadoutBlockConfig.by_state={self.by_state!r}: must be True, '
                       'False or None (None: BY_STATE).')


_TILE_ELEMENTS = 16 * 16 * 32  # the measured best tile (H100, Vim-S: 14-wide grid, N = 16)


def default_block_config(grid_width: int, n_state: int) -> PatchedReadoutBlockConfig:
  """block_d giving the measured best tile size (16 × 512 fp32) for this grid width and N; a
  wider grid or a larger N gets fewer channels per program (at least 16)."""
  rows, n_pad = max(16, next_pow2(grid_width)), max(2, next_pow2(n_state))
  block_d = min(128, max(16, _TILE_ELEMENTS // (rows * n_pad)))
  return PatchedReadoutBlockConfig(block_d=block_d)
