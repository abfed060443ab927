"""Options of the selective scan (VJPS, STATES_LAYOUTS) and the block
configuration of its Pallas Triton kernel.

One program owns `block_d` channels of one batch row and walks time in chunks of `chunk_t`
steps (the chunk's loads are issued together, then the steps run unrolled). With
`time_segments` > 1 the sequence is also split into that many segments walked in parallel (a
first launch finds each segment's end state, a small carry pass chains them, a second launch
walks every segment from its carried state): what keeps the GPU busy at batch 1-2. Its channels are
split into groups of `32 * num_warps`: each group has an (N, 32 * num_warps) fp32 state tile in
which every thread owns one channel's N states, so the C readout (a sum over N) needs no
shuffles. `block_d / (32 * num_warps)` groups per program = channels per thread; the groups
share the B_t/C_t loads of each step.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

VJPS = ('reference', 'kernel')                # how 'triton' is differentiated
STATES_LAYOUTS = ('bldn', 'blnd')             # (B, L, D, N); (B, L, N, D), the kernel's own

_MAX_BLOCK_D = 1024
_MAX_CHUNK_T = 64
_WARPS = (1, 2, 4, 8)
_MAX_TIME_SEGMENTS = 64

# Small batches split the sequence (`time_segments`) until about this many programs run: below
# it one program per (channel block, row) leaves most SMs idle and the sequential walk sets the
# time. Segments stay at least MIN_SEGMENT_STEPS long (the carry pass and the second walk cost
# about one extra step per segment). 0 turns the split off. Module-level so benchmarks can A/B
# them (`bench/e2e_latency.py`'s switches).
SEGMENT_TARGET_PROGRAMS = 256
MIN_SEGMENT_STEPS = 16


@dataclasses.dataclass(frozen=True)
class SelectiveScanBlockConfig:
  """Tiling and launch parameters (hashable: it is a static argument of the jitted kernel).

  block_d:    channels per program; a multiple of 32 * num_warps. D need not be a multiple:
              the last block is masked.
  chunk_t:    time steps whose loads are issued together and whose steps are unrolled; L need
              not be a multiple: the remainder runs as a shorter, unrolled tail.
  num_warps:  warps per program (1, 2, 4 or 8).
  num_stages: 1: each chunk loads its inputs, then computes. >= 2: the kernel double-buffers
              u/delta/z in registers (loads chunk c + 1's rows before computing chunk c;
              Triton's own pipeliner does not touch these narrow loads); the value also goes to
              Triton as is.
  time_segments: segments of the sequence walked in parallel (1: one walk over all L steps).
              Each segment is ceil(L / time_segments) steps; the forward kernel only (the
              adjoint walks the whole sequence).
  """
  block_d: int = 32
  chunk_t: int = 4
  num_warps: int = 1
  num_stages: int = 1
  time_segments: int = 1

  def __post_init__(self):
    for name in ('block_d', 'chunk_t', 'num_warps', 'num_stages', 'time_segments'):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f'SelectiveScanBlockConfig.{name} must be an int, got {value!r}.')
    if self.num_warps not in _WARPS:
      raise ValueError(f'SelectiveScanBlockConfig.num_warps={self.num_warps}: use one of '
                       f'{_WARPS}.')
    if (self.block_d <= 0 or self.block_d % self.group_d or self.block_d > _MAX_BLOCK_D):
      raise ValueError(
          f'SelectiveScanBlockConfig.block_d={self.block_d}: use a positive multiple of '
          f'32 * num_warps = {self.group_d} (one channel per thread per group), at most '
          f'{_MAX_BLOCK_D}. D need not be a multiple of block_d; the last block is masked.')
    if not 1 <= self.chunk_t <= _MAX_CHUNK_T:
      raise ValueError(f'SelectiveScanBlockConfig.chunk_t={self.chunk_t}: use 1..{_MAX_CHUNK_T} '
                       '(L need not be a multiple; the remainder runs as a tail).')
    if not 1 <= self.num_stages <= 8:
      raise ValueError(f'SelectiveScanBlockConfig.num_stages={self.num_stages}: use 1..8.')
    if not 1 <= self.time_segments <= _MAX_TIME_SEGMENTS:
      raise ValueError(f'SelectiveScanBlockConfig.time_segments={self.time_segments}: use '
                       f'1..{_MAX_TIME_SEGMENTS} (1: no split of the sequence).')

  @property
  def group_d(self) -> int:
    """Channels of one group: one per thread of the program."""
    return 32 * self.num_warps


# Untuned starting points, chosen from register counts of the compiled kernel (NOTES.md; to be
# replaced by the H100 sweep of bench.py): prefetching the next chunk's u/delta/z costs few
# registers, so both defaults double-buffer. D <= 1024: one warp, one channel per thread, 106
# registers, so a Vim-S batch of 64 (1536 programs) is resident at once. Larger D: two channels
# per thread (138 registers) halve the program count so Vim-B's batch of 64 still fits one wave.
# The dtype does not change the choice: fp32 rows cost about the same registers as bf16 ones.
def default_block_config(channels: int, dtype, batch: int | None = None,
                         length: int | None = None) -> SelectiveScanBlockConfig:
  """Default config for a channel count D and the input dtype; with `batch` and `length`, a
  small batch also splits the sequence into segments (`time_segments_for`)."""
  if channels <= 0:
    raise ValueError(f'default_block_config: channels must be positive, got {channels}.')
  if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
    raise TypeError(f'default_block_config: dtype must be floating point, got {dtype}.')
  if channels <= 1024:
    config = SelectiveScanBlockConfig(block_d=32, chunk_t=4, num_warps=1, num_stages=2)
  else:
    config = SelectiveScanBlockConfig(block_d=64, chunk_t=2, num_warps=1, num_stages=2)
  if batch is None or length is None:
    return config
  programs = -(-channels // config.block_d) * batch
  return dataclasses.replace(config, time_segments=time_segments_for(programs, length))


def time_segments_for(programs: int, length: int) -> int:
  """Segments that bring `programs` one-walk programs up to SEGMENT_TARGET_PROGRAMS, each at
  least MIN_SEGMENT_STEPS long (1: no split)."""
  if SEGMENT_TARGET_PROGRAMS <= programs:
    return 1
  wanted = -(-SEGMENT_TARGET_PROGRAMS // programs)
  return max(1, min(wanted, length // MIN_SEGMENT_STEPS, _MAX_TIME_SEGMENTS))
