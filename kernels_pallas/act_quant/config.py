"""What the activation quantizer computes (`ActQuantParams`) and how the kernel launches.

`ActQuantParams` is the op's own description of one quantizer: the integer grids, the outlier
mode and the detection recurrence. The library's `ActSpec` adds calibration settings on top and
hands the kernel `ActSpec.kernel_params`; the validation below is shared by both, so a bad value
is rejected with the same message wherever it is set.

Launch: one program owns the refresh window of `block_b` samples and holds all C channels of a
time step (outlier statistics are over all of them), as three exact tiles for Vim's widths of
3 x 2^k (C = 192 ... 1536), else one power-of-two tile; `block_c` is normally derived from C
(`ActQuantBlockConfig.resolve`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kernels_pallas._blocks import is_pow2, next_pow2, prev_pow2

MIN_SCALE = 1e-8  # floor of every step size (a learned step may cross 0)
OUTLIER_MODES = ('int', 'float', 'none')
TRIGGERS = ('sample', 'batch', 'official')

_VALID_WARPS = (1, 2, 4, 8, 16)
MAX_BLOCK_C = 8192  # one step's channels must fit in the registers of one program
# Lanes of one program's (samples x channels) tile when block_b is derived. Measured on an H200
# (act_quant/bench.py --sweep, Vim shapes, batch 64, 2026-12-02): one sample per program was
# fastest from C = 384 up (two or more samples were 5-80 % slower at C = 768/1536, where the
# bigger tiles spill), two samples gained ~10-20 % at C <= 384 with 2 warps.
TILE_ELEMENTS = 512
# A launch of at most this many programs leaves most SMs idle (an H200 has 132; Vim's 197 tokens
# make 20 refresh windows per sample, so batch <= 3, or <= 1 with the directions vmapped, which
# doubles the programs): each program then runs alone on its SM and its window walk is a chain
# of dependent steps, so more warps (fewer lanes, hence fewer instructions, per thread and step)
# shorten the call. SASS for sm_90 (`bench/triton_compile_time.py --sass --num_warps`, session
# 24): the codes kernel's step at C = 1536 is 543 instructions with 4 warps, 325 with 8 and 257
# with 16; at C = 768 535 / 317 / 249 with 2 / 4 / 8; Δ's dequantized kernel at C = 1536 579 /
# 385 with 4 / 8. With many programs per SM the total instruction count decides instead, and it
# grows with the warps (batch 64 measured best at 2-4 warps), so the rule is for small grids
# only. Timed in session 26 (H200, Vim-B W4A4O8 batch 1: 7.99 ms with the rule, 8.39 without).
SMALL_GRID_PROGRAMS = 64
# Lanes each thread keeps per step under that rule (fewer: the cross-warp reductions grow).
MIN_LANES_PER_THREAD = 4
# 1: Vim's x_proj output (dt for dt_proj, B, C) is quantized in one launch
# (`api.act_quant_segments`, read by `models.layers.split_sites`), 0: dt by dt_proj's own
# act_quant call and B/C by one vmapped call (two launches per direction and block). On since
# session 29's A/Bs on an H100 (`bench/e2e_latency.py --cases=default,act_quant_segments=1`):
# Vim-B W4A4O8 -0.27 to -0.36 ms at batch 64 and -0.14 to -0.27 ms at batch 1 in two runs.
SEGMENTS_IN_ONE_LAUNCH = 1


def check_bits(owner: str, name: str, bits) -> None:
  """Grids of 2..16 bits: one bit is no grid, and codes above 16 bits lose float32 exactness."""
  if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or not 2 <= bits <= 16:
    raise ValueError(f'{owner}.{name} must be an integer between 2 and 16, got {bits!r}.')


def check_quantizer_fields(owner: str, q) -> None:
  """Validates the `ActQuantParams` fields of q (an ActQuantParams or an ActSpec)."""
  check_bits(owner, 'bits', q.bits)
  check_bits(owner, 'outlier_bits', q.outlier_bits)
  if not isinstance(q.symmetric, (bool, np.bool_)):
    raise ValueError(f'{owner}.symmetric must be a bool, got {q.symmetric!r}.')
  if q.outliers not in OUTLIER_MODES:
    raise ValueError(f'{owner}.outliers must be one of {OUTLIER_MODES}, got {q.outliers!r}.')
  if not (isinstance(q.k, (int, float, np.number)) and q.k > 0):
    raise ValueError(f'{owner}.k (outlier threshold mu + k*sigma) must be a number > 0, '
                     f'got {q.k!r}.')
  if not isinstance(q.n_refresh, (int, np.integer)) or q.n_refresh < 1:
    raise ValueError(f'{owner}.n_refresh (outlier-set reset period in time steps) must be an '
                     f'int >= 1, got {q.n_refresh!r}.')
  if q.trigger not in TRIGGERS:
    raise ValueError(f'{owner}.trigger must be one of {TRIGGERS}, got {q.trigger!r}.')
  if q.std_ddof not in (0, 1):
    raise ValueError(f'{owner}.std_ddof must be 0 (population) or 1 (unbiased), '
                     f'got {q.std_ddof!r}.')


@dataclasses.dataclass(frozen=True)
class ActQuantParams:
  """One per-step activation quantizer (hashable: a static argument of jitted code).

  Inliers: a static step per time step on the narrow grid ±(2^(bits-1) - 1), or [0, 2^bits - 1]
  with a zero point when not `symmetric`. Outliers: channels with |x| > mu + k sigma (std with
  `std_ddof`) found whenever the step's inliers overflow their grid (`trigger`: per 'sample',
  per 'batch', or 'official': any sample and window), kept until the next refresh every
  `n_refresh` steps; quantized at `outlier_bits` on a dynamic per-token grid ('int'), kept in
  float ('float'), or not detected ('none').
  """
  bits: int = 8
  symmetric: bool = True
  outliers: str = 'int'
  outlier_bits: int = 8
  k: float = 3.0
  n_refresh: int = 10
  trigger: str = 'sample'
  std_ddof: int = 1

  def __post_init__(self):
    check_quantizer_fields('ActQuantParams', self)

  @property
  def qmin(self) -> int:
    return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

  @property
  def qmax(self) -> int:
    return 2 ** (self.bits - 1) - 1 if self.symmetric else 2 ** self.bits - 1

  @property
  def code_range(self) -> tuple[int, int, int, int]:
    """(qmin, qmax, outlier qmin, outlier qmax): the grids as the kernels take them."""
    return self.qmin, self.qmax, self.outlier_qmin, self.outlier_qmax

  @property
  def outlier_qmin(self) -> int:
    return -(2 ** (self.outlier_bits - 1) - 1) if self.symmetric else 0

  @property
  def outlier_qmax(self) -> int:
    b = self.outlier_bits
    return 2 ** (b - 1) - 1 if self.symmetric else 2 ** b - 1


@dataclasses.dataclass(frozen=True)
class ActQuantBlockConfig:
  """block_c: channel block (None -> next power of two >= C); block_b: samples per program of
  the per-sample kernel (None -> as many as fit TILE_ELEMENTS lanes); num_warps: warps per
  program (None -> `default_warps`: the batch-64 sweep's best, more on small grids); unroll:
  walk a window as straight-line code instead of a loop.

  Why `unroll` is off by default: a loop iteration ends in a barrier the compiler does not
  schedule across, and unrolled, step t's stores can overlap step t + 1's reductions; an H200
  measured that at narrow tiles once (session 21: C = 384 0.073 -> 0.055 ms, but C = 1536
  0.096 -> 0.202 ms, the wide tiles spill) and not again (session 23: C = 192 0.094 -> 0.082
  and -> 0.143 ms in two runs, C = 384 0.067 -> 0.082 and 0.106 -> 0.097). And an unrolled
  kernel takes ~50x as long to compile: 55 s against 1.1 s for the loop (Triton 3.9 for sm_90
  on a 2-core CPU, every width, `bench/triton_compile_time.py`), what stalled sessions 22-23's
  GPU tests, benches and end-to-end runs (BENCHMARKS.md, session 23)."""
  block_c: int | None = None
  block_b: int | None = None
  num_warps: int | None = None
  unroll: bool = False

  def __post_init__(self):
    if self.block_c is not None and (not isinstance(self.block_c, int)
                                     or not is_pow2(self.block_c)
                                     or not 16 <= self.block_c <= MAX_BLOCK_C):
      raise ValueError(f'ActQuantBlockConfig.block_c={self.block_c!r}: must be a power of two in '
                       f'[16, {MAX_BLOCK_C}] (or None to derive it from C).')
    if self.block_b is not None and (not isinstance(self.block_b, int)
                                     or not is_pow2(self.block_b) or self.block_b > 256):
      raise ValueError(f'ActQuantBlockConfig.block_b={self.block_b!r}: must be a power of two '
                       '<= 256 (or None to derive it from C and the batch).')
    if self.num_warps is not None and self.num_warps not in _VALID_WARPS:
      raise ValueError(f'ActQuantBlockConfig.num_warps={self.num_warps!r}: choose one of '
                       f'{_VALID_WARPS} (or None).')
    if not isinstance(self.unroll, bool):
      raise ValueError(f'ActQuantBlockConfig.unroll={self.unroll!r}: must be True or False.')

  def resolve(self, channels: int, batch: int = 1, windows: int = 1
              ) -> tuple[int, int, int, int]:
    """(block_c, block_b, num_warps, n_chunks) for C channels, a batch and the refresh windows
    of its sequence: a time step's row is held as n_chunks tiles of block_c lanes. Without a
    block_c, a C of 3 x 2^k (Vim's widths: 192 ... 1536) becomes three exact chunks instead of
    one tile padded by a third (Triton tiles are powers of two); other C one tile of the next
    power of two. A block smaller than C is an error. Without num_warps, `default_warps`."""
    n_chunks = 1
    if self.block_c:
      block_c = self.block_c
    elif channels % 3 == 0 and is_pow2(channels // 3) and channels // 3 >= 16:
      block_c, n_chunks = channels // 3, 3
    else:
      block_c = max(16, next_pow2(channels))
    if block_c * n_chunks < channels:
      raise ValueError(f'ActQuantBlockConfig.block_c={block_c} < C={channels}: every channel of a '
                       'time step must sit in one block (outlier statistics are over all '
                       'channels); use block_c=None.')
    if block_c > MAX_BLOCK_C:
      raise ValueError(f'act_quant: C={channels} needs a {block_c}-wide block, above the '
                       f'{MAX_BLOCK_C} limit of this kernel; use implementation="xla".')
    lanes = block_c * n_chunks
    block_b = self.block_b or max(1, min(next_pow2(batch), prev_pow2(TILE_ELEMENTS // lanes)))
    programs = -(-batch // block_b) * windows
    num_warps = self.num_warps or default_warps(block_b * lanes, programs)
    return block_c, block_b, num_warps, n_chunks


def default_warps(tile_lanes: int, programs: int) -> int:
  """Warps of a program holding tile_lanes lanes per step, in a launch of `programs`: 2 up to
  1024 lanes, else 4 (the batch-64 sweep's best, H200 2026-12-02); on a small grid
  (`SMALL_GRID_PROGRAMS`) as many as keep MIN_LANES_PER_THREAD lanes per thread, up to 16."""
  warps = 2 if tile_lanes <= 1024 else 4
  if programs <= SMALL_GRID_PROGRAMS:
    wide = prev_pow2(max(1, tile_lanes // (32 * MIN_LANES_PER_THREAD)))
    warps = max(warps, min(16, wide))
  return warps
