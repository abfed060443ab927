"""Pallas Triton kernel of the OuroMamba per-time-step activation quantizer.

Computes exactly what `ouromamba_jax.quant.activations.quantize_activation_int` computes
(symmetric grids; outliers 'int' or 'none'), for x (B, L, C):

trigger='sample': one program per (sample, refresh window). It holds every channel of a time
step in one power-of-two block (padding lanes masked out of all statistics) and walks the
n_refresh steps of its window, carrying the outlier mask in registers. Per step t:

  a      = |x_t| with the current outlier channels zeroed
  S_D    = max(a) / qmax;    trigger = S_D > S_I(t)
  thr    = mean(a) + k * std(a)                (over the C real channels; ddof from the spec)
  mask  |= trigger & (a > thr)
  q_in   = clip(round(x_t * !mask / S_I(t)), +-qmax)
  s_o    = max(max|x_t * mask|, 1e-8) / o_qmax;  q_out = clip(round(x_t * mask / s_o), +-o_qmax)

trigger='batch': step t triggers if *any* sample's S_D exceeds S_I(t), which couples the
samples step by step; one program per window loops over the samples twice per step (trigger,
then update + quantize) and reads each sample's previous mask back from the mask output it
wrote one step earlier (same program, same addresses, program order).

Rounding is half-to-even (jnp.round) built from floor, since Triton has no round primitive.
With `pack=True` the int4 inlier codes are packed two per byte along C (low nibble = even
channel), the format `kernels_pallas.mixed_gemm` reads.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas import _pallas_compat as compat
from kernels_pallas._pallas_compat import pl, plgpu
from kernels_pallas.mixed_gemm import reference as int4_format

MIN_SCALE = 1e-8  # floor of every step (ouromamba_jax.quant.search.MIN_SCALE)


def round_half_even(v):
  """jnp.round semantics (ties to even) from floor; exact for |v| < 2^22."""
  f = jnp.floor(v)
  frac = v - f
  f_is_odd = (f - 2.0 * jnp.floor(0.5 * f)) == 1.0
  up = (frac > 0.5) | ((frac == 0.5) & f_is_odd)
  return f + up.astype(v.dtype)


def _f32_reciprocal(v: float) -> float:
  """1/v rounded once to fp32: the constant XLA folds for a division by v."""
  return float(np.float32(1.0) / np.float32(v))


def _reciprocal_rn(v, interpret: bool):
  """IEEE (round-to-nearest) 1/v. Triton's fp32 `/` is the approximate div.full.f32, so on
  the GPU the division is done by inline PTX; the interpreter runs XLA's IEEE divide."""
  if interpret:
    return 1.0 / v
  (r,) = plgpu.elementwise_inline_asm(
      'div.rn.f32 $0, $1, $2;', args=[jnp.ones_like(v), v], constraints='=f,f,f', pack=1,
      result_shape_dtypes=[jax.ShapeDtypeStruct(v.shape, v.dtype)])
  return r


@dataclasses.dataclass(frozen=True)
class _Math:
  """Static constants of one quantizer, in the exact fp32 form the XLA reference computes.

  XLA rewrites `a / broadcast(b)` as `a * broadcast(1 / b)` (and `a / c` as `a * fl(1 / c)`),
  so every division of the reference appears here as a multiply by an IEEE reciprocal.
  """
  channels: int
  block_c: int
  qmax: float
  o_qmax: float
  k: float
  ddof: int
  interpret: bool

  def stats(self, x, mask, col_ok):
    """(S_D, threshold, |x_in|) of the current inliers over the C real channels."""
    a = jnp.where(mask, 0.0, jnp.abs(x))  # padding lanes hold x = 0
    s_d = jnp.max(a) * _f32_reciprocal(self.qmax)
    mean = jnp.sum(a) * _f32_reciprocal(self.channels)
    centered = jnp.where(col_ok, a - mean, 0.0)
    var = jnp.sum(centered * centered) * _f32_reciprocal(self.channels - self.ddof)
    return s_d, mean + self.k * jnp.sqrt(var), a

  def quantize_inliers(self, x, mask, inv_s):
    """Codes on the static step S_I(t) (given as its IEEE reciprocal); outlier lanes -> 0."""
    q_in = jnp.clip(round_half_even(jnp.where(mask, 0.0, x) * inv_s), -self.qmax, self.qmax)
    return q_in.astype(jnp.int8)

  def quantize_outliers(self, x, mask):
    """Codes on the dynamic per-token step max|x_t * mask| / o_qmax, and that step."""
    outliers = jnp.where(mask, x, 0.0)
    s_o = jnp.maximum(jnp.max(jnp.abs(outliers)), MIN_SCALE) * _f32_reciprocal(self.o_qmax)
    inv_so = _reciprocal_rn(jnp.full((self.block_c,), s_o, jnp.float32), self.interpret)
    q_out = jnp.clip(round_half_even(outliers * inv_so), -self.o_qmax, self.o_qmax)
    return q_out.astype(jnp.int8), s_o


def _pack_int4(q):
  even, odd = int4_format.split_even_odd(q)
  return jnp.bitwise_or(jnp.bitwise_and(even, jnp.int8(0x0F)),
                        jax.lax.shift_left(odd, jnp.int8(4)))


def _load_step(x_ref, b, t, in_seq, col_ok, block_c):
  x = plgpu.load(x_ref.at[b, t, pl.ds(0, block_c)], mask=col_ok & in_seq,
                 other=jnp.zeros((), x_ref.dtype))
  return x.astype(jnp.float32)


def _store_inliers(qin_ref, b, t, in_seq, q_in, math: _Math, pack: bool):
  if pack:
    half_ok = (jnp.arange(math.block_c // 2) < math.channels // 2) & in_seq
    plgpu.store(qin_ref.at[b, t, pl.ds(0, math.block_c // 2)], _pack_int4(q_in), mask=half_ok)
  else:
    cols_ok = (jnp.arange(math.block_c) < math.channels) & in_seq
    plgpu.store(qin_ref.at[b, t, pl.ds(0, math.block_c)], q_in, mask=cols_ok)


def _store_outliers(refs, b, t, in_seq, q_out, s_o, mask, math: _Math):
  qout_ref, oscale_ref, mask_ref = refs
  cols_ok = (jnp.arange(math.block_c) < math.channels) & in_seq
  plgpu.store(qout_ref.at[b, t, pl.ds(0, math.block_c)], q_out, mask=cols_ok)
  plgpu.store(mask_ref.at[b, t, pl.ds(0, math.block_c)], mask, mask=cols_ok)
  plgpu.store(oscale_ref.at[b, t], s_o, mask=in_seq)


def _time_step(window, i, n_refresh, length):
  """(t clamped into the sequence, whether the unclamped t is inside it): short last window."""
  t_raw = window * n_refresh + i
  return jnp.minimum(t_raw, length - 1), t_raw < length


def _sample_kernel(x_ref, s_ref, inv_ref, qin_ref, *outlier_refs, math: _Math, length: int,
                   n_refresh: int, pack: bool, detect: bool):
  b, window = pl.program_id(0), pl.program_id(1)
  col_ok = jnp.arange(math.block_c) < math.channels

  def step(i, mask):
    t, in_seq = _time_step(window, i, n_refresh, length)
    x = _load_step(x_ref, b, t, in_seq, col_ok, math.block_c)
    if detect:
      s_d, thr, a = math.stats(x, mask, col_ok)
      mask = mask | ((a > thr) & col_ok & (s_d > s_ref[t]))
    _store_inliers(qin_ref, b, t, in_seq, math.quantize_inliers(x, mask, inv_ref[t]), math, pack)
    if detect:
      q_out, s_o = math.quantize_outliers(x, mask)
      _store_outliers(outlier_refs, b, t, in_seq, q_out, s_o, mask, math)
    return mask

  jax.lax.fori_loop(0, n_refresh, step, jnp.zeros((math.block_c,), jnp.bool_))


def _batch_kernel(x_ref, s_ref, inv_ref, qin_ref, *outlier_refs, math: _Math, batch: int,
                  length: int, n_refresh: int, pack: bool):
  window = pl.program_id(0)
  col_ok = jnp.arange(math.block_c) < math.channels
  mask_ref = outlier_refs[2]

  def step(i, carry):
    t, in_seq = _time_step(window, i, n_refresh, length)
    t_prev = jnp.maximum(t - 1, 0)

    def previous_mask(b):  # what this program stored for sample b one step earlier
      return plgpu.load(mask_ref.at[b, t_prev, pl.ds(0, math.block_c)], mask=col_ok & (i > 0),
                        other=jnp.zeros((), jnp.bool_))

    def sample_triggers(b, any_trigger):
      x = _load_step(x_ref, b, t, in_seq, col_ok, math.block_c)
      s_d, _, _ = math.stats(x, previous_mask(b), col_ok)
      return any_trigger | (s_d > s_ref[t])

    trigger = jax.lax.fori_loop(0, batch, sample_triggers, jnp.zeros((), jnp.bool_))

    def update_and_quantize(b, c):
      x = _load_step(x_ref, b, t, in_seq, col_ok, math.block_c)
      mask = previous_mask(b)
      _, thr, a = math.stats(x, mask, col_ok)
      mask = mask | ((a > thr) & col_ok & trigger)
      _store_inliers(qin_ref, b, t, in_seq, math.quantize_inliers(x, mask, inv_ref[t]), math,
                     pack)
      q_out, s_o = math.quantize_outliers(x, mask)
      _store_outliers(outlier_refs, b, t, in_seq, q_out, s_o, mask, math)
      return c

    return jax.lax.fori_loop(0, batch, update_and_quantize, carry)

  jax.lax.fori_loop(0, n_refresh, step, jnp.zeros((), jnp.int32))


@functools.partial(jax.jit, static_argnames=(
    'bits', 'k', 'n_refresh', 'trigger', 'std_ddof', 'outlier_bits', 'detect', 'pack',
    'block_c', 'num_warps', 'interpret'))
def act_quant(x, inlier_scale, *, bits: int, k: float, n_refresh: int, trigger: str,
              std_ddof: int, outlier_bits: int, detect: bool, pack: bool, block_c: int,
              num_warps: int, interpret: bool = False):
  """Validated (B, L, C) input and (L,) steps -> (inlier codes, outlier codes, outlier scale,
  mask, clamped inlier scale). Without `detect` (outliers='none') the last four are constants."""
  batch, length, channels = x.shape
  n_windows = -(-length // n_refresh)
  scale = jnp.maximum(inlier_scale.astype(jnp.float32), MIN_SCALE)
  # per-step scales (and their IEEE reciprocals) padded to whole windows; t is clamped to L - 1
  s_pad = jnp.pad(scale, (0, n_windows * n_refresh - length), constant_values=1.0)
  inv_pad = 1.0 / s_pad
  math = _Math(channels=channels, block_c=block_c, qmax=float(2 ** (bits - 1) - 1),
               o_qmax=float(2 ** (outlier_bits - 1) - 1), k=float(k), ddof=std_ddof,
               interpret=interpret)
  out_shape = [jax.ShapeDtypeStruct((batch, length, channels // 2 if pack else channels),
                                    jnp.int8)]
  if detect:
    out_shape += [jax.ShapeDtypeStruct((batch, length, channels), jnp.int8),
                  jax.ShapeDtypeStruct((batch, length), jnp.float32),
                  jax.ShapeDtypeStruct((batch, length, channels), jnp.bool_)]
  common = dict(math=math, length=length, n_refresh=n_refresh, pack=pack)
  if detect and trigger == 'batch':
    kernel, grid = functools.partial(_batch_kernel, batch=batch, **common), (n_windows,)
  else:
    kernel = functools.partial(_sample_kernel, detect=detect, **common)
    grid = (batch, n_windows)
  compat.filter_triton_deprecation()
  outs = pl.pallas_call(
      kernel, out_shape=out_shape, grid=grid, interpret=interpret,
      name=f'act_quant_{trigger if detect else "static"}',
      compiler_params=compat.triton_compiler_params(num_warps, 1),
  )(x, s_pad, inv_pad)
  if detect:
    q_in, q_out, o_scale, mask = outs
    return q_in, q_out, o_scale, mask, scale
  (q_in,) = outs
  return (q_in, jnp.zeros((batch, length, channels), jnp.int8),
          jnp.ones((batch, length), jnp.float32), jnp.zeros((batch, length, channels), jnp.bool_),
          scale)
