"""Pallas Triton kernel of the OuroMamba per-time-step activation quantizer.

Computes exactly what `reference.act_quant_xla` computes
(symmetric grids, and asymmetric ones such as Δ's; outliers 'int' or 'none'), for x (B, L, C):

trigger='sample': one program per (block_b samples, refresh window). It holds every channel of
a time step of its samples in one (block_b, block_c) tile (padding lanes and samples past the
batch masked out of all statistics, each row's statistics its own) and walks the n_refresh
steps of its window, carrying the outlier masks in registers (as `_keep`: +inf or 0 per lane).
The walk is serial (step t's mask needs step t - 1's), so a program is latency-bound; several
samples per program give each step's reductions more independent work and cut the number of
programs. Per step t and sample:

  a      = |x_t| with the current outlier channels zeroed (min(|x_t|, keep))
  S_D    = max(a) / qmax;    trigger = S_D > S_I(t)
  thr    = mean(a) + k * std(a)                (over the C real channels; ddof from the spec;
                                                std from sum a and sum a^2, as the reference)
  mask  |= trigger & (a > thr)
  s_o    = max(max|x_t * mask|, 1e-8) / o_qmax (from the same round of reductions: `detect`)
  each lane is scaled, clipped and rounded once on its grid (S_I(t) or s_o; a symmetric grid's
  inliers clipped after the rounding, its outliers never past it: `_Math.scaled`); the inlier
  code is 0 at outlier lanes and the outlier code 0 at inlier lanes.

Asymmetric grids (codes 0 .. 2^b - 1 with a zero point): S_D = (max - min of the inliers over the
real channels) / qmax; inlier codes round(clip(v, -z, qmax - z)) + z with the static zero point
z(t); outliers get a dynamic per-token range [min(x_t * mask, 0), max(x_t * mask, 0)], step
range / o_qmax and zero point round(-lo / s_o) (an IEEE division, as XLA computes it).

trigger='batch': step t triggers if *any* sample's S_D exceeds S_I(t), which couples the
samples step by step; one program per window loops over the samples twice per step (trigger,
then update + quantize) and reads each sample's previous mask back from the mask output it
wrote one step earlier (same program, same addresses, program order).

Rounding is half-to-even (jnp.round), by inline PTX since Triton has no round primitive: codes
by one `cvt.rni` conversion to int32, values that stay float (the dequantized output, outlier
zero points) by one `cvt.rni` to fp32.
Codes are written one per byte, int4 ones too (the form the mixed GEMM reads). `unroll` walks
the window as straight-line code instead of a loop (off by default: `config.ActQuantBlockConfig`).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from kernels_pallas import _pallas_compat as compat
from kernels_pallas._pallas_compat import pl, plgpu
from kernels_pallas.act_quant import producers
from kernels_pallas.act_quant.config import MIN_SCALE
from kernels_pallas.act_quant import reference
from kernels_pallas.act_quant.reference import int_dtype, reciprocal_f32


def _ptx(instruction: str, constraints: str, dtype, *args):
  """One PTX instruction applied lane-wise (`$0` the result, `$1`... the args), dtype out."""
  (r,) = plgpu.elementwise_inline_asm(
      instruction, args=list(args), constraints=constraints, pack=1,
      result_shape_dtypes=[jax.ShapeDtypeStruct(args[-1].shape, dtype)])
  return r


def round_half_even(v, interpret: bool):
  """jnp.round semantics (ties to even) for values that stay float, in one conversion per lane
  (`cvt.rni.f32.f32`, SASS FRND): Triton has no round primitive, the floor-built form took ~12
  lane operations and two adds around 1.5 * 2^23 (exact below 2^22 only) took two
  (act_quant NOTES, session 35). Codes skip even this (`_round_to_int`)."""
  if interpret:
    return jnp.round(v)
  return _ptx('cvt.rni.f32.f32 $0, $1;', '=f,f', jnp.float32, v)


def _round_to_int(v, interpret: bool):
  """round_half_even(v) as int32 in one conversion (`cvt.rni`, F2I with round-to-nearest-even)
  where Triton's cast would truncate: 2 of ~50 instructions per lane and step fewer (v is
  clipped to a code grid, so it fits)."""
  if interpret:
    return jnp.round(v).astype(jnp.int32)
  return _ptx('cvt.rni.s32.f32 $0, $1;', '=r,f', jnp.int32, v)


# div.rn.f32's fast path as ptxas expands it, without its FCHK test and slow-path call: 1/v by
# MUFU.RCP and one Newton step, then the quotient and its remainder correction, which rounds
# to nearest. That call, taken or not, split the window step into basic blocks that ptxas
# schedules one by one, so the next row's prefetch was read within ~30 instructions of its
# load and every step waited a full memory latency (SASS for sm_90, act_quant NOTES session
# 36).
_QUOTIENT_PTX = ('{ .reg .f32 r, e, q, nv;\n'
                 ' neg.f32 nv, $2;\n'
                 ' rcp.approx.ftz.f32 r, $2;\n'
                 ' fma.rn.f32 e, nv, r, 0f3F800000;\n'
                 ' fma.rn.f32 r, r, e, r;\n'
                 ' mul.rn.f32 q, $1, r;\n'
                 ' fma.rn.f32 e, nv, q, $1;\n'
                 ' fma.rn.f32 $0, r, e, q; }')


def _divide_rn(a, v, interpret: bool):
  """IEEE a / v (round to nearest) for v in [2^-126, 2^126] and a normal or 0 quotient.
  Triton's fp32 `/` is the approximate div.full.f32, and PTX's div.rn.f32 brings its slow-path
  call, so the GPU runs div.rn's fast path alone (`_QUOTIENT_PTX`); the interpreter XLA's
  divide. The kernel divides by its steps (floored at MIN_SCALE / o_qmax) and an outlier
  range's end by its step (|a / v| <= o_qmax): a denormal quotient (a denormal a) may round
  differently, and is rounded to the zero point 0 either way. A v outside the range (a step
  of 0 or inf, from non-finite inputs) gives NaN or 0 where IEEE gives inf or 0."""
  if interpret:
    return a / v
  return _ptx(_QUOTIENT_PTX, '=f,f,f', jnp.float32, a, v)


def _reciprocal_rn(v, interpret: bool):
  """IEEE 1/v (`_divide_rn` of 1)."""
  return _divide_rn(jnp.ones_like(v), v, interpret)


def _lanes(fn, *rows):
  """fn applied tile by tile to rows held as tuples of (rows, width) tiles."""
  return tuple(fn(*parts) for parts in zip(*rows))


def _merged(combine, chunks):
  """A row's tiles combined lane-wise into one tile."""
  merged = chunks[0]
  for chunk in chunks[1:]:
    merged = combine(merged, chunk)
  return merged


def _reduce_pair(reduce_fn, combine, chunks_a, chunks_b):
  """Two per-row reductions of one kind over every tile of a row: ((rows,), (rows,)).

  Triton exchanges every reduction across warps through shared memory with barriers, which
  were the step's latency. So each row's tiles are combined lane-wise first (one reduction
  per statistic, not one per tile) and the two statistics share one exchange (a (rows, width,
  2) tile reduced over its lanes). At Vim-B's C = 1536 (three tiles), SASS for sm_90
  (`bench/triton_compile_time.py` + cuobjdump, session 23): the codes kernel's window step
  24 -> 4 barriers, 84 -> 28 shuffles, 764 -> 601 instructions, 90 -> 80 registers; Δ's
  dequantized kernel 36 -> 6 barriers, 803 -> 580 instructions. Maxima and minima are exact
  either way; the sums round in another order (as they already did against XLA's), which
  moves the threshold by ulps."""
  both = jnp.stack([_merged(combine, chunks_a), _merged(combine, chunks_b)], axis=-1)
  return jnp.unstack(reduce_fn(both, axis=1), axis=-1)


@dataclasses.dataclass(frozen=True)
class _Math:
  """Static constants of one quantizer, in the exact fp32 form the XLA reference computes.

  XLA rewrites `a / broadcast(b)` as `a * broadcast(1 / b)` (and `a / c` as `a * fl(1 / c)`),
  so every division of the reference appears here as a multiply by an IEEE reciprocal.

  A time step's row is held as `n_chunks` chunks of block_c lanes (a tuple): Triton tiles are
  powers of two, and Vim's widths are 3 x 2^k (192 ... 1536), which one padded tile would hold
  with a quarter of its lanes idle; three exact chunks waste none.
  """
  channels: int
  block_c: int
  qmin: float
  qmax: float
  o_qmin: float
  o_qmax: float
  k: float
  ddof: int
  interpret: bool
  symmetric: bool = True
  code_dtype: object = jnp.int8          # int32 where an asymmetric 8-bit grid exceeds a byte
  outlier_dtype: object = jnp.int8
  n_chunks: int = 1
  input_offset: int = 0   # the first channel of the input that is this quantizer's channel 0

  def tile_channels(self, j: int, offset: int = 0):
    """The channels of chunk j, as a slice of the channel axis (from `offset`)."""
    return pl.ds(offset + j * self.block_c, self.block_c)

  def col_ok(self):
    """Per chunk, which of its lanes are real channels: a constant where all are (Vim's widths
    in three exact chunks), so the compiler drops that mask from every load, store and select
    (SASS for sm_90 at C = 1536: the window step's integer compares and predicate shuffling)."""
    return tuple(_all_true(self.block_c) if (j + 1) * self.block_c <= self.channels
                 else j * self.block_c + jnp.arange(self.block_c) < self.channels
                 for j in range(self.n_chunks))

  def reductions(self, x, keep, col_ok):
    """Every per-row statistic of a step, in one round of independent reductions over the
    row's chunks (a serial chain of reductions was the kernel's latency):
    (S_D, threshold, |x_in|, the inliers' extremes, the old outliers' extremes).
    keep: the outlier state as `_keep` carries it; |x_in| = min(|x|, keep) and the old
    outliers' |x| = |x| - |x_in|, both exact."""
    abs_x = _lanes(jnp.abs, x)
    a = _lanes(jnp.minimum, abs_x, keep)  # padding: x = 0
    s1, s2 = _reduce_pair(jnp.sum, jnp.add, a, _lanes(lambda ac: ac * ac, a))
    if self.symmetric:
      hi_in, old_hi = _reduce_pair(jnp.max, jnp.maximum, a, _lanes(jnp.subtract, abs_x, a))
      lo_in, old_lo = -hi_in, -old_hi
      s_d = hi_in * reciprocal_f32(self.qmax)
    else:  # range of the inliers (zeroed outlier channels included, padding lanes not)
      mask = _outlier_lanes(keep)
      x_in = _lanes(lambda xc, mc: jnp.where(mc, 0.0, xc), x, mask)
      x_old = _lanes(lambda xc, mc: jnp.where(mc, xc, 0.0), x, mask)
      hi_in, old_hi = _reduce_pair(
          jnp.max, jnp.maximum,
          _lanes(lambda xc, ok: jnp.where(ok, xc, -jnp.inf), x_in, col_ok), x_old)
      lo_in, old_lo = _reduce_pair(
          jnp.min, jnp.minimum,
          _lanes(lambda xc, ok: jnp.where(ok, xc, jnp.inf), x_in, col_ok), x_old)
      s_d = (hi_in - lo_in) * reciprocal_f32(self.qmax)
    mean = s1 * reciprocal_f32(self.channels)
    var = jnp.maximum((s2 - s1 * mean) * reciprocal_f32(max(self.channels - self.ddof, 1)), 0.0)
    return s_d, mean + self.k * jnp.sqrt(var), a, (lo_in, hi_in), (old_lo, old_hi)

  def detect(self, x, keep, col_ok, fires_at):
    """One step of the recurrence: (new outlier state `keep`, (outlier step, zero point) per
    row); `fires_at` maps the rows' S_D to whether each row triggers (S_D > S_I(t), or the
    batch's trigger). A lane joins the outliers where |x_in| > thr on a row that fires: the
    row's bar is thr there and +inf elsewhere, one compare and one select per lane (padding
    lanes and old outliers have |x_in| = 0, never above thr >= 0).

    The outlier grid needs the extremes of x over the *new* mask, which would be a second
    round of reductions after the mask update. It is not: a channel joins the mask iff it
    fires (S_D > S_I(t)) and |x_in| > thr, so the new outliers' largest |x| (symmetric), or
    their max / min of x (asymmetric, clamped at 0 by the grid), is the inliers' own extreme
    whenever that extreme is past thr, and nothing otherwise. Exact (max/min round nothing)."""
    s_d, thr, a, (lo_in, hi_in), (old_lo, old_hi) = self.reductions(x, keep, col_ok)
    fires = fires_at(s_d)
    bar = jnp.where(fires, thr, jnp.inf)[:, None]
    keep = _lanes(lambda kc, ac: jnp.where(ac > bar, 0.0, kc), keep, a)
    if self.symmetric:
      top = jnp.maximum(old_hi, jnp.where(fires & (hi_in > thr), hi_in, 0.0))
      s_o = jnp.maximum(top, MIN_SCALE) * reciprocal_f32(self.o_qmax)
      z_o = jnp.zeros(s_o.shape, jnp.float32)
    else:
      lo = jnp.minimum(jnp.minimum(old_lo, 0.0), jnp.where(fires & (-lo_in > thr), lo_in, 0.0))
      hi = jnp.maximum(jnp.maximum(old_hi, 0.0), jnp.where(fires & (hi_in > thr), hi_in, 0.0))
      s_o = jnp.maximum(hi - lo, MIN_SCALE) * reciprocal_f32(self.o_qmax)
      z_o = round_half_even(_divide_rn(-lo, s_o, self.interpret), self.interpret)
    return keep, (s_o, z_o)

  def per_sample_step(self, x, keep, col_ok, s_ref, z_ref, t, detect: bool):
    """Step t of the per-sample quantizer on rows x (tiles): the static grid, the outlier
    update (`detect`: S_D > S_I(t) triggers) and every lane scaled and clipped on its grid.
    Returns (scaled lanes, keep, outlier mask (None without `detect`), S_I(t), zero point,
    outlier grid or None)."""
    s_t, inv_s, zero = self.static_grid(s_ref, z_ref, t, x[0].shape[0])
    outlier_grid = mask = None
    if detect:
      keep, outlier_grid = self.detect(x, keep, col_ok, lambda s_d: s_d > s_t)
      mask = _outlier_lanes(keep)
    return self.scaled(x, mask, inv_s, zero, outlier_grid), keep, mask, s_t, zero, outlier_grid

  def static_grid(self, s_ref, z_ref, t, rows: int):
    """Step t's static grid: (S_I(t) floored at MIN_SCALE, its IEEE reciprocal per row as a
    (rows, 1) column, zero point). Read and derived per program step here rather than padded
    and divided in XLA before the call (two small XLA kernels per call, ~290 calls per Vim
    forward). The reciprocal is taken on a (rows,) vector: the inline PTX takes no scalars."""
    s_t = jnp.maximum(s_ref[t], MIN_SCALE)
    zero = jnp.zeros((), jnp.float32) if z_ref is None else z_ref[t]
    inv = _reciprocal_rn(jnp.full((rows,), s_t, jnp.float32), self.interpret)
    return s_t, inv[:, None], zero

  def scaled(self, x, mask, inv_s, zero, outlier_grid):
    """Per chunk, every lane scaled and clipped once on its own grid, to be rounded once: the
    static step S_I(t) (its IEEE reciprocal per row) and zero point z(t) for inliers, the
    dynamic per-row step s_o and zero point z_o for outliers (the IEEE division runs once per
    row, 1 / s_o). Zero points not added yet. Each lane is an inlier or an outlier, and its
    other code is that of 0, so one rounding serves both codes (lane operations are this
    kernel's cost).

    A symmetric grid's lanes are not clipped here: its inliers are clipped after rounding
    (`codes`, `dequantized`; clipping an integer to integer bounds is the same as clipping
    before rounding), by constant bounds, and its outliers need no clip: s_o is their own
    largest |x| / o_qmax, so |x| / s_o <= o_qmax (1 + 4 ulp) rounds to o_qmax at most. That
    saves a selected bound and its negation per lane (SASS for sm_90, act_quant NOTES session
    35)."""
    if outlier_grid is None:
      return _lanes(lambda xc: jnp.clip(xc * inv_s, self.qmin - zero, self.qmax - zero), x)
    s_o, z_o = outlier_grid
    inv_so = _reciprocal_rn(s_o, self.interpret)[:, None]
    z_lanes = z_o[:, None]

    def one(xc, mc):
      v = xc * jnp.where(mc, inv_so, inv_s)
      if self.symmetric:
        return v
      lo = jnp.where(mc, self.o_qmin - z_lanes, self.qmin - zero)
      hi = jnp.where(mc, self.o_qmax - z_lanes, self.qmax - zero)
      return jnp.clip(v, lo, hi)

    return _lanes(one, x, mask)

  def codes(self, v, mask, zero, outlier_grid):
    """(inlier codes, (outlier codes, s_o, z_o) or None) from the scaled lanes, each rounded
    straight to an integer (`_round_to_int`) and offset by its zero point in integers."""
    q = _lanes(lambda vc: _round_to_int(vc, self.interpret), v)
    if outlier_grid is None:
      return _lanes(lambda qc: self._plus(qc, zero).astype(self.code_dtype), q), None
    s_o, z_o = outlier_grid
    inliers = self._inlier_clip(q, int)
    q_in = _lanes(lambda qc, mc: self._plus(jnp.where(mc, 0, qc), zero).astype(
        self.code_dtype), inliers, mask)
    z_lanes = 0 if self.symmetric else z_o.astype(jnp.int32)[:, None]
    q_out = _lanes(lambda qc, mc: (jnp.where(mc, qc, 0) + z_lanes).astype(self.outlier_dtype),
                   q, mask)
    return q_in, (q_out, s_o, z_o)

  def dequantized(self, v, mask, s_t, outlier_grid, dtype):
    """x_hat = (code - zero point) x step per lane, as `reference.dequantize` computes it (its
    other term is an exact 0), cast to dtype: what a site that only dequantizes reads."""
    r = _lanes(lambda vc: round_half_even(vc, self.interpret), v)
    if outlier_grid is None:
      return _lanes(lambda rc: (rc * s_t).astype(dtype), r)
    s_o = outlier_grid[0][:, None]
    return _lanes(lambda ic, rc, mc: jnp.where(mc, rc * s_o, ic * s_t).astype(dtype),
                  self._inlier_clip(r, float), r, mask)

  def _inlier_clip(self, rounded, kind):
    """The rounded lanes of `scaled` with a symmetric grid's inliers clipped to it (kind: int
    codes or float values; an asymmetric grid's lanes are clipped already)."""
    if not self.symmetric:
      return rounded
    return _lanes(lambda rc: jnp.clip(rc, kind(self.qmin), kind(self.qmax)), rounded)

  def _plus(self, q, zero):
    """Integer codes q + the static zero point (nothing to add on a symmetric grid)."""
    return q if self.symmetric else q + zero.astype(jnp.int32)


def _time_step(window, i, n_refresh, length):
  """(t clamped into the sequence, whether the unclamped t is inside it): short last window."""
  t_raw = window * n_refresh + i
  return jnp.minimum(t_raw, length - 1), t_raw < length


def _rows(b0, rows, t, lanes):
  """Index of the tile of samples b0.. at step t on the channels `lanes` (a slice)."""
  return (pl.ds(b0, rows), t, lanes)


def _load_tiles(ref, b0, t, lanes_ok, math: _Math, offset: int = 0):
  """The row tiles (rows, width) of samples b0.. at step t from a (B, L, C) ref from channel
  `offset` on, masked lanes 0 (False)."""
  rows, other = lanes_ok[0].shape[0], jnp.zeros((), ref.dtype)
  return tuple(plgpu.load(ref.at[_rows(b0, rows, t, math.tile_channels(j, offset))], mask=ok,
                          other=other) for j, ok in enumerate(lanes_ok))


class _OperandLoader:
  """How a producer's `kernel_fetch` reads its operands for the rows of samples b0.. (row_ok:
  which exist and are live), masked lanes 0: `tiles` of a (B, L, C) operand at a step,
  `per_row` of a (B, L) one as a (rows, 1) column, `per_channel` of a (C,) one as (1, width)
  tiles; each as loaded (its own dtype), the arithmetic left to `kernel_form`."""

  def __init__(self, b0, row_ok, math: _Math):
    self.b0, self.row_ok, self.math = b0, row_ok, math

  def tiles(self, ref, step):
    return _load_tiles(ref, self.b0, step, _lanes_ok(self.row_ok, self.math), self.math,
                       self.math.input_offset)

  def per_row(self, ref, step):
    rows = self.row_ok.shape[0]
    values = plgpu.load(ref.at[pl.ds(self.b0, rows), step], mask=self.row_ok,
                        other=jnp.zeros((), ref.dtype))
    return values[:, None]

  def per_channel(self, ref):
    math = self.math
    return tuple(plgpu.load(ref.at[math.tile_channels(j, math.input_offset)], mask=ok,
                            other=jnp.zeros((), ref.dtype))[None, :]
                 for j, ok in enumerate(math.col_ok()))


def _fetch_rows(x, b0, t, row_ok, math: _Math, length: int):
  """The loads of step t's row of samples b0.. (row_ok: which rows to read), as loaded: the
  input's tiles, or a producer's operands (`producers`). The window walk carries them into the
  next step, where `_form_rows` first reads them, so a load's latency hides behind a whole step
  (a conversion or a producer's arithmetic right after the load made ptxas wait for it there:
  act_quant NOTES, session 36)."""
  load = _OperandLoader(b0, row_ok, math)
  if producers.is_produced(x):
    return x.kernel_fetch(load, t, length)
  return load.tiles(x, t)


def _form_rows(x, fetched):
  """The fp32 row tiles (masked lanes 0) from `_fetch_rows`' loads."""
  if producers.is_produced(x):
    return x.kernel_form(fetched)
  return tuple(v.astype(jnp.float32) for v in fetched)


def _load_rows(x, b0, t, row_ok, math: _Math, length: int):
  """Step t's row tiles (fp32) of samples b0.., loaded and formed at once."""
  return _form_rows(x, _fetch_rows(x, b0, t, row_ok, math, length))


def _all_true(n: int):
  """A (n,) mask known to be all True when the kernel is compiled."""
  return jnp.full((n,), True)


def _row_ok(b0, block_b: int, batch: int):
  """Which of a program's block_b rows are samples of the batch (a constant when every
  program's rows are, as with one sample per program)."""
  if batch % block_b == 0:
    return _all_true(block_b)
  return b0 + jnp.arange(block_b) < batch


def _lanes_ok(row_ok, math: _Math):
  """Per tile, the (rows, width) lanes that exist: real rows x real channels."""
  return tuple(row_ok[:, None] & ok[None, :] for ok in math.col_ok())


def _store_rows(qin_ref, outlier_refs, b0, t, row_ok, q_in, outlier, mask, math: _Math):
  """Writes one step of rows samples (row_ok: which rows exist and are inside the sequence):
  inlier codes, and with `outlier` (codes, steps, zero points) the outlier codes, masks, steps
  and (asymmetric) zero points."""
  rows = row_ok.shape[0]
  _store_chunks(qin_ref, b0, t, row_ok, q_in, math)
  if outlier is None:
    return
  q_out, s_o, z_o = outlier
  qout_ref, oscale_ref, zero_ref, mask_ref = _outlier_outputs(outlier_refs, math)
  _store_chunks(qout_ref, b0, t, row_ok, q_out, math)
  if mask_ref is not None:
    _store_chunks(mask_ref, b0, t, row_ok, mask, math)
  plgpu.store(oscale_ref.at[pl.ds(b0, rows), t], s_o, mask=row_ok)
  if zero_ref is not None:
    plgpu.store(zero_ref.at[pl.ds(b0, rows), t], z_o.astype(jnp.int32), mask=row_ok)


def _store_chunks(ref, b0, t, row_ok, chunks, math: _Math):
  """Writes a row held as tiles to the (B, L, C) output ref at step t (real lanes only)."""
  rows, oks = row_ok.shape[0], _lanes_ok(row_ok, math)
  for j, ok in enumerate(oks):
    plgpu.store(ref.at[_rows(b0, rows, t, math.tile_channels(j))], chunks[j], mask=ok)


def _outlier_outputs(outlier_refs, math: _Math):
  """(codes, steps, zero points or None, mask or None): the outputs after the inlier codes,
  in `act_quant`'s order; the mask is written only when asked for (the GEMM and the dequantize
  do not read it: one byte per element less)."""
  rest = list(outlier_refs[2:])
  zero_ref = None if math.symmetric else rest.pop(0)
  return outlier_refs[0], outlier_refs[1], zero_ref, (rest[0] if rest else None)


def _all_inliers(rows: int, math: _Math):
  """A window's first outlier state: no outliers (`_keep`)."""
  return tuple(jnp.full((rows, math.block_c), jnp.inf, jnp.float32) for _ in range(math.n_chunks))


def _keep(mask):
  """The outlier state the window walk carries, from a mask: per lane +inf for an inlier
  channel and 0 for an outlier one, so that min(|x|, keep) is |x_in| (one instruction where a
  boolean mask cost a predicate conversion and a select, and its predicates were spilled to
  registers: SASS for sm_90, act_quant NOTES session 35). `_outlier_lanes` is its mask."""
  return _lanes(lambda mc: jnp.where(mc, 0.0, jnp.inf), mask)


def _outlier_lanes(keep):
  """The outlier mask of a `_keep` state."""
  return _lanes(lambda kc: kc == 0.0, keep)


def _walk(n_steps: int, step, carry, unroll: bool):
  """carry after step(i, carry) for i = 0 .. n_steps - 1: a loop, or straight-line code (i a
  Python int) so the compiler can overlap one step's stores with the next step's reductions."""
  if not unroll:
    return jax.lax.fori_loop(0, n_steps, step, carry)
  for i in range(n_steps):
    carry = step(i, carry)
  return carry


def _sample_kernel(x_ref, s_ref, z_ref, qin_ref, *outlier_refs, math: _Math,
                   batch: int, block_b: int, length: int, n_refresh: int, detect: bool,
                   unroll: bool, dequantize_to=None, program=None):
  """`program`: (sample block, window) of this program; its grid position by default."""
  b_block, window = program if program is not None else (pl.program_id(0), pl.program_id(1))
  b0 = b_block * block_b
  col_ok = math.col_ok()
  row_ok = _row_ok(b0, block_b, batch)

  def fetch(i):  # steps past the window (the prefetch after its last one) read nothing
    t, in_seq = _time_step(window, i, n_refresh, length)
    live = in_seq & (i < n_refresh)
    return _fetch_rows(x_ref, b0, t, row_ok & live, math, length)

  def step(i, carry):
    # The next step's rows do not depend on the masks: loading them before this step's
    # reductions, and forming them only in the next step, hides their latency behind a whole
    # step (one program walks its window serially). Unrolled, the last step has no next one.
    keep, fetched = carry
    fetched_next = fetched if unroll and i == n_refresh - 1 else fetch(i + 1)
    x = _form_rows(x_ref, fetched)
    t, in_seq = _time_step(window, i, n_refresh, length)
    v, keep, mask, s_t, zero, outlier_grid = math.per_sample_step(x, keep, col_ok, s_ref, z_ref,
                                                                  t, detect)
    if dequantize_to is not None:  # qin_ref is the dequantized output
      _store_chunks(qin_ref, b0, t, row_ok & in_seq,
                    math.dequantized(v, mask, s_t, outlier_grid, dequantize_to), math)
    else:
      q_in, outlier = math.codes(v, mask, zero, outlier_grid)
      _store_rows(qin_ref, outlier_refs, b0, t, row_ok & in_seq, q_in, outlier, mask, math)
    return keep, fetched_next

  _walk(n_refresh, step, (_all_inliers(block_b, math), fetch(0)), unroll)


def _batch_kernel(x_ref, s_ref, z_ref, qin_ref, *outlier_refs, math: _Math,
                  batch: int, length: int, n_refresh: int):
  """One program per window, one sample (a one-row tile) at a time."""
  window = pl.program_id(0)
  col_ok = math.col_ok()
  one_row = jnp.arange(1) < 1
  all_lanes = _lanes_ok(one_row, math)
  mask_ref = _outlier_outputs(outlier_refs, math)[3]  # always written: the next step reads it

  def step(i, carry):
    t, in_seq = _time_step(window, i, n_refresh, length)
    t_prev = jnp.maximum(t - 1, 0)
    grid = math.static_grid(s_ref, z_ref, t, 1)
    live = one_row & in_seq

    def previous_mask(b):  # what this program stored for sample b one step earlier
      return _load_tiles(mask_ref, b, t_prev, tuple(ok & (i > 0) for ok in all_lanes), math)

    def sample_triggers(b, any_trigger):
      x = _load_rows(x_ref, b, t, live, math, length)
      s_d = math.reductions(x, _keep(previous_mask(b)), col_ok)[0]
      return any_trigger | (jnp.max(s_d) > grid[0])

    trigger = jax.lax.fori_loop(0, batch, sample_triggers, jnp.zeros((), jnp.bool_))

    def update_and_quantize(b, c):
      x = _load_rows(x_ref, b, t, live, math, length)
      keep, outlier_grid = math.detect(x, _keep(previous_mask(b)), col_ok,
                                       lambda s_d: jnp.broadcast_to(trigger, s_d.shape))
      mask = _outlier_lanes(keep)
      q_in, outlier = math.codes(math.scaled(x, mask, *grid[1:], outlier_grid), mask, grid[2],
                                 outlier_grid)
      _store_rows(qin_ref, outlier_refs, b, t, live, q_in, outlier, mask, math)
      return c

    return jax.lax.fori_loop(0, batch, update_and_quantize, carry)

  jax.lax.fori_loop(0, n_refresh, step, jnp.zeros((), jnp.int32))


def _with_grid_refs(kernel, x_tree, **static):
  """The kernel with its refs split as (x, S_I, zero points or None for a symmetric grid,
  inlier codes, *outlier outputs); x is rebuilt from its operands' refs as `x_tree` (the
  treedef of the input: an array, or a producer)."""
  n_operands = x_tree.num_leaves

  def run(*refs):
    x_ref = jax.tree.unflatten(x_tree, refs[:n_operands])
    s_ref, refs = refs[n_operands], refs[n_operands + 1:]
    z_ref, refs = (None, refs) if static['math'].symmetric else (refs[0], refs[1:])
    kernel(x_ref, s_ref, z_ref, *refs, **static)
  return run


def _math_and_grid(x, inlier_scale, zero_point, code_range, k, std_ddof, block_c, n_chunks,
                   interpret):
  """The kernel's static constants and its per-step grid inputs: the raw steps (and zero
  points) as they are, since t is clamped to L - 1 in the kernel, which floors and inverts
  S_I(t) itself (`_Math.static_grid`)."""
  symmetric = zero_point is None
  grid_inputs = [inlier_scale.astype(jnp.float32)]
  if not symmetric:
    grid_inputs.append(zero_point.astype(jnp.float32))
  math = _math(x.shape[2], block_c, code_range, k, std_ddof, symmetric, interpret, n_chunks)
  return math, grid_inputs


def _math(channels, block_c, code_range, k, std_ddof, symmetric, interpret, n_chunks) -> _Math:
  qmin, qmax, o_qmin, o_qmax = code_range
  return _Math(channels=channels, block_c=block_c, qmin=float(qmin), qmax=float(qmax),
               o_qmin=float(o_qmin), o_qmax=float(o_qmax), k=float(k), ddof=std_ddof,
               interpret=interpret, symmetric=symmetric, code_dtype=int_dtype(qmin, qmax),
               outlier_dtype=int_dtype(o_qmin, o_qmax), n_chunks=n_chunks)


def _launch(kernel, x, grid_inputs, out_shape, grid, name, num_warps, interpret):
  """The pallas_call on x's operands (the array, or a producer's) and the grid inputs."""
  compat.filter_triton_deprecation()
  return pl.pallas_call(
      kernel, out_shape=out_shape, grid=grid, interpret=interpret, name=name,
      compiler_params=compat.triton_compiler_params(num_warps, 1),
  )(*jax.tree.leaves(x), *grid_inputs)


_STATIC = ('code_range', 'k', 'n_refresh', 'std_ddof', 'detect', 'block_c', 'block_b',
           'num_warps', 'n_chunks', 'unroll', 'interpret')


def _code_shapes(batch: int, length: int, width: int, math: _Math, *, detect: bool,
                 with_mask: bool) -> list:
  """What a codes launch writes: the inlier codes and, where it detects outliers, their codes,
  per-token steps, zero points (asymmetric grids) and the mask (`with_mask`)."""
  rows, tokens = (batch, length, width), (batch, length)
  out = [jax.ShapeDtypeStruct(rows, math.code_dtype)]
  if detect:
    out += [jax.ShapeDtypeStruct(rows, math.outlier_dtype),
            jax.ShapeDtypeStruct(tokens, jnp.float32)]
    if not math.symmetric:
      out.append(jax.ShapeDtypeStruct(tokens, jnp.int32))
    if with_mask:
      out.append(jax.ShapeDtypeStruct(rows, jnp.bool_))
  return out


def _no_outliers(batch: int, length: int, width: int):
  """The outlier codes and steps of a quantizer that detects none (the kernel writes neither)."""
  return jnp.zeros((batch, length, width), jnp.int8), jnp.ones((batch, length), jnp.float32)


@functools.partial(jax.jit,
                   static_argnames=_STATIC + ('trigger', 'with_mask'))
def act_quant(x, inlier_scale, zero_point, *, code_range: tuple[int, int, int, int], k: float,
              n_refresh: int, trigger: str, std_ddof: int, detect: bool, block_c: int,
              block_b: int, num_warps: int, with_mask: bool = True, n_chunks: int = 1,
              unroll: bool = False, interpret: bool = False):
  """Validated (B, L, C) input, (L,) steps and (L,) zero points (None: symmetric) ->
  (inlier codes, outlier codes, outlier scale, mask, clamped inlier scale, outlier zero points
  (B, L) int32 or None). code_range = (qmin, qmax, outlier qmin, outlier qmax); block_b:
  samples per program of the 'sample' kernel; a row is n_chunks tiles of block_c lanes; unroll:
  the 'sample' kernel walks a window as straight-line code.
  Without `detect` (outliers='none') the outlier outputs are constants; without `with_mask`
  the mask is None (the batch-trigger kernel writes it anyway: it reads it back)."""
  batch, length, channels = x.shape
  math, grid_inputs = _math_and_grid(x, inlier_scale, zero_point, code_range, k, std_ddof,
                                     block_c, n_chunks, interpret)
  scale = jnp.maximum(inlier_scale.astype(jnp.float32), MIN_SCALE)
  n_windows, _ = reference.windows(length, n_refresh)
  with_mask = with_mask or (detect and trigger == 'batch')
  out_shape = _code_shapes(batch, length, channels, math, detect=detect, with_mask=with_mask)
  common = dict(math=math, length=length, n_refresh=n_refresh)
  if detect and trigger == 'batch':
    kernel = _with_grid_refs(_batch_kernel, jax.tree.structure(x), batch=batch, **common)
    grid = (n_windows,)
  else:
    kernel = _with_grid_refs(_sample_kernel, jax.tree.structure(x), detect=detect, batch=batch,
                             block_b=block_b, unroll=unroll, **common)
    grid = (pl.cdiv(batch, block_b), n_windows)
  outs = _launch(kernel, x, grid_inputs, out_shape, grid,
                 f'act_quant_{trigger if detect else "static"}', num_warps, interpret)
  if detect:
    q_in, q_out, o_scale = outs[:3]
    o_zero = None if math.symmetric else outs[3]
    return q_in, q_out, o_scale, (outs[-1] if with_mask else None), scale, o_zero
  (q_in,) = outs
  return (q_in, *_no_outliers(batch, length, channels),
          jnp.zeros((batch, length, channels), jnp.bool_) if with_mask else None, scale, None)


@functools.partial(jax.jit, static_argnames=_STATIC + ('out_dtype',))
def act_quant_dequantized(x, inlier_scale, zero_point, *, code_range: tuple[int, int, int, int],
                          k: float, n_refresh: int, std_ddof: int, detect: bool, block_c: int,
                          block_b: int, num_warps: int, out_dtype, n_chunks: int = 1,
                          unroll: bool = False, interpret: bool = False):
  """dequantize(act_quant(x)) (B, L, C) in out_dtype from one pass (per-sample trigger): the
  codes never reach memory. Arguments as `act_quant`'s."""
  batch, length, channels = x.shape
  math, grid_inputs = _math_and_grid(x, inlier_scale, zero_point, code_range, k, std_ddof,
                                     block_c, n_chunks, interpret)
  kernel = _with_grid_refs(_sample_kernel, jax.tree.structure(x), detect=detect, batch=batch,
                           block_b=block_b, math=math, length=length, n_refresh=n_refresh,
                           unroll=unroll, dequantize_to=out_dtype)
  grid = (pl.cdiv(batch, block_b), reference.windows(length, n_refresh)[0])
  (y,) = _launch(kernel, x, grid_inputs, [jax.ShapeDtypeStruct(x.shape, out_dtype)], grid,
                 'act_quant_dequantized', num_warps, interpret)
  return y


@dataclasses.dataclass(frozen=True)
class Segment:
  """One channel segment of `act_quant_segments`' input, quantized on its own (static part):
  its width, integer grids, outlier detection and launch shape (from `ActQuantBlockConfig`),
  and what it writes: the codes (`dequantize_to` None) or the dequantized values."""
  width: int
  code_range: tuple[int, int, int, int]
  k: float
  n_refresh: int
  std_ddof: int
  detect: bool
  symmetric: bool
  block_c: int
  block_b: int
  n_chunks: int
  dequantize_to: object = None

  def windows(self, length: int) -> int:
    return reference.windows(length, self.n_refresh)[0]

  def programs(self, batch: int, length: int) -> int:
    return pl.cdiv(batch, self.block_b) * self.windows(length)

  def outputs(self, batch: int, length: int, math: _Math) -> list:
    """The segment's outputs: dequantized values, or codes (+ outlier codes, steps and zero
    points where it detects outliers), as `act_quant` with with_mask=False."""
    if self.dequantize_to is not None:
      return [jax.ShapeDtypeStruct((batch, length, self.width), self.dequantize_to)]
    return _code_shapes(batch, length, self.width, math, detect=self.detect, with_mask=False)


def _segments_kernel(*refs, x_tree, segments, maths, batch: int, length: int):
  """One launch for every segment: program ranges one after the other, each segment's programs
  walking its windows exactly as `_sample_kernel` does, on the input's channels from the
  segment's offset. The segments' walks are independent, so they overlap on the GPU instead
  of running as one launch each."""
  n_x = x_tree.num_leaves
  x_ref = jax.tree.unflatten(x_tree, refs[:n_x])
  rest = list(refs[n_x:])
  grids = [[rest.pop(0), None if seg.symmetric else rest.pop(0)] for seg in segments]
  outputs = [[rest.pop(0) for _ in seg.outputs(batch, length, math)]
             for seg, math in zip(segments, maths)]
  pid = pl.program_id(0)
  first = 0
  for seg, math, (s_ref, z_ref), outs in zip(segments, maths, grids, outputs):
    n_windows = seg.windows(length)
    count = seg.programs(batch, length)

    @pl.when((pid >= first) & (pid < first + count))
    def _(seg=seg, math=math, s_ref=s_ref, z_ref=z_ref, outs=outs, first=first,
          n_windows=n_windows):
      local = pid - first
      _sample_kernel(x_ref, s_ref, z_ref, *outs, math=math, batch=batch, block_b=seg.block_b,
                     length=length, n_refresh=seg.n_refresh, detect=seg.detect, unroll=False,
                     dequantize_to=seg.dequantize_to,
                     program=(local // n_windows, local % n_windows))
    first += count


@functools.partial(jax.jit, static_argnames=('segments', 'num_warps', 'interpret'))
def act_quant_segments(x, inlier_scales, zero_points, *, segments: tuple[Segment, ...],
                       num_warps: int, interpret: bool = False):
  """x (B, L, sum of the widths) (or a producer) quantized segment by segment in one launch:
  segment i, the next `segments[i].width` channels, on its steps `inlier_scales[i]` (L,) and
  zero points `zero_points[i]` (None: symmetric). Returns per segment its dequantized values
  (B, L, width), or (inlier codes, outlier codes, outlier scale, clamped inlier scale, outlier
  zero points or None) with constants for the outlier part where it does not detect."""
  batch, length, _ = x.shape
  maths, grid_inputs, out_shape, offset = [], [], [], 0
  for seg, scale, zero in zip(segments, inlier_scales, zero_points):
    math = dataclasses.replace(
        _math(seg.width, seg.block_c, seg.code_range, seg.k, seg.std_ddof, seg.symmetric,
              interpret, seg.n_chunks), input_offset=offset)
    maths.append(math)
    grid_inputs += [scale.astype(jnp.float32)] + ([] if seg.symmetric else
                                                  [zero.astype(jnp.float32)])
    out_shape += seg.outputs(batch, length, math)
    offset += seg.width
  kernel = functools.partial(_segments_kernel, x_tree=jax.tree.structure(x), segments=segments,
                             maths=tuple(maths), batch=batch, length=length)
  grid = (sum(seg.programs(batch, length) for seg in segments),)
  outs = list(_launch(kernel, x, grid_inputs, out_shape, grid, 'act_quant_segments', num_warps,
                      interpret))
  results = []
  for seg, scale, math in zip(segments, inlier_scales, maths):
    mine = [outs.pop(0) for _ in seg.outputs(batch, length, math)]
    if seg.dequantize_to is not None:
      results.append(mine[0])
      continue
    clamped = jnp.maximum(scale.astype(jnp.float32), MIN_SCALE)
    if seg.detect:
      o_zero = None if seg.symmetric else mine[3]
      results.append((mine[0], mine[1], mine[2], clamped, o_zero))
    else:
      results.append((mine[0], *_no_outliers(batch, length, seg.width), clamped, None))
  return tuple(results)
