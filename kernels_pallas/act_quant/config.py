"""Launch settings of the activation-quantization kernel, validated up front.

One program owns one sample's refresh window and holds all C channels of a time step in a
single power-of-two block (C = 192 ... 1536 in Vim), so `block_c` is normally derived from C.
"""
from __future__ import annotations

import dataclasses

from kernels_pallas._blocks import is_pow2, next_pow2

_VALID_WARPS = (1, 2, 4, 8, 16)
MAX_BLOCK_C = 8192  # one step's channels must fit in the registers of one program


@dataclasses.dataclass(frozen=True)
class ActQuantBlockConfig:
  """block_c: channel block (None -> next power of two >= C); num_warps: warps per program."""
  block_c: int | None = None
  num_warps: int | None = None

  def __post_init__(self):
    if self.block_c is not None and (not isinstance(self.block_c, int)
                                     or not is_pow2(self.block_c)
                                     or not 16 <= self.block_c <= MAX_BLOCK_C):
      raise ValueError(f'ActQuantBlockConfig.block_c={self.block_c!r}: must be a power of two in '
                       f'[16, {MAX_BLOCK_C}] (or None to derive it from C).')
    if self.num_warps is not None and self.num_warps not in _VALID_WARPS:
      raise ValueError(f'ActQuantBlockConfig.num_warps={self.num_warps!r}: choose one of '
                       f'{_VALID_WARPS} (or None).')

  def resolve(self, channels: int) -> tuple[int, int]:
    """(block_c, num_warps) for C channels; a block smaller than C is an error."""
    block_c = self.block_c or max(16, next_pow2(channels))
    if block_c < channels:
      raise ValueError(f'ActQuantBlockConfig.block_c={block_c} < C={channels}: every channel of a '
                       'time step must sit in one block (outlier statistics are over all '
                       'channels); use block_c=None.')
    if block_c > MAX_BLOCK_C:
      raise ValueError(f'act_quant: C={channels} needs a {block_c}-wide block, above the '
                       f'{MAX_BLOCK_C} limit of this kernel; use implementation="xla".')
    num_warps = self.num_warps or (4 if block_c <= 1024 else 8)
    return block_c, num_warps
