"""Public entry point of OuroMamba's per-time-step activation quantizer (integer form).

    act_quant(x (B, L, C), inlier_scale (L,), params) -> IntActivation
      inlier_q       (B, L, C) int8 codes on the static step S_I(t) (0 at outlier channels),
                     one per byte, int4 ones too (the form the mixed GEMM reads)
      inlier_scale   (L,) the steps actually used (floored at MIN_SCALE = 1e-8)
      outlier_q      (B, L, C) int8 codes on the dynamic per-token step (0 at inliers)
      outlier_scale  (B, L) float32
      outlier_mask   (B, L, C) bool (None from the kernel when asked not to write it)
      inlier_zero_point (L,) / outlier_zero_point (B, L) int32 for asymmetric grids (Δ), else None

    act_quant_dequantized(x, inlier_scale, params) -> dequantize(act_quant(x)), one pass

    act_quant_segments(x, sites) -> per channel segment of x, its site's codes or values,
                                    every segment in one launch

Semantics are those of `reference.act_quant_xla` (the XLA implementation, and the reference the
kernel is tested against code for code); `params` is an `ActQuantParams`.

implementation (`kernels_pallas._dispatch`): None -> 'triton' on GPU when the kernel covers the
params, except int outliers with trigger='batch', else 'xla' (the batch-trigger kernel re-reads
the whole batch per program and measured 4-5x slower than XLA, BENCHMARKS.md); 'triton' -> the
Pallas kernel, also for 'batch' (`interpret=None` runs it in the Pallas interpreter off-GPU).
The kernel covers symmetric and asymmetric (Δ) grids with bits <= 8, outliers 'int'
(outlier_bits <= 8) or 'none', and trigger 'sample' or 'batch'; 'official' (any sample and any
window) and float outliers are XLA-only.

zero_point: the (L,) static zero points of an asymmetric grid (from `calibrate_inlier_scale`);
must be None for a symmetric one.

x may also be a producer (`producers.DirectionMean`): the operands x is made of, which the
kernel combines per time step in registers (x is never written); the XLA implementation
materializes it. Same codes either way.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from kernels_pallas import _dispatch
from kernels_pallas import _pallas_compat as compat
from kernels_pallas.act_quant import pallas_triton
from kernels_pallas.act_quant import producers
from kernels_pallas.act_quant import reference
from kernels_pallas.act_quant.config import MAX_BLOCK_C, ActQuantBlockConfig, ActQuantParams
from kernels_pallas.act_quant.reference import IntActivation


def kernel_unsupported_reason(params: ActQuantParams, channels: int) -> str | None:
  """Why the Pallas kernel cannot run these params (None when it can)."""
  if params.bits > 8:
    return f'bits={params.bits} > 8 (codes would not fit int8)'
  if params.outliers not in ('int', 'none'):
    return f"outliers={params.outliers!r} (float outliers are XLA-only; use 'int' or 'none')"
  if params.outliers == 'int' and params.outlier_bits > 8:
    return f'outlier_bits={params.outlier_bits} > 8'
  if params.outliers == 'int' and params.trigger not in ('sample', 'batch'):
    return (f"trigger={params.trigger!r} couples every window of the sequence; the kernel "
            "supports 'sample' and 'batch'")
  if channels > MAX_BLOCK_C:
    return f'C={channels} channels exceed the one-block limit {MAX_BLOCK_C}'
  return None


def _batch_trigger_is_slower(params: ActQuantParams, channels: int) -> str | None:
  """The batch-trigger kernel re-reads the whole batch per program: 4-5x slower than XLA on an
  H100 (BENCHMARKS.md), so the default leaves it to XLA."""
  del channels
  if params.outliers == 'int' and params.trigger == 'batch':
    return "int outliers with trigger='batch' measured 4-5x slower than XLA"
  return None


DISPATCH = _dispatch.Dispatch(
    op='act_quant',
    implementations=(
        _dispatch.Implementation('xla'),
        _dispatch.Implementation('triton', kernel_unsupported_reason, _batch_trigger_is_slower)),
    preference={'gpu': ('triton', 'xla'), 'default': ('xla',)})
IMPLEMENTATIONS = DISPATCH.names


def _check_zero_point(zero_point, params: ActQuantParams, length: int) -> None:
  """Zero points exist only on asymmetric grids, one per time step: a wrong shape would be read
  past its end by the kernel (or fail as an opaque broadcast in XLA)."""
  if params.symmetric:
    if zero_point is not None:
      raise ValueError('act_quant: a symmetric grid has no zero points, got zero_point of '
                       f'shape {jnp.shape(zero_point)}; pass zero_point=None (or use '
                       'symmetric=False).')
    return
  if zero_point is None:
    raise ValueError(f'act_quant: an asymmetric grid needs its zero points ({length},); '
                     'calibrate them with `calibrate_inlier_scale`.')
  if jnp.shape(zero_point) != (length,):
    raise ValueError(f'act_quant: zero_point must have shape ({length},) (one zero point per '
                     f'time step), got {jnp.shape(zero_point)}; calibrate it with '
                     '`calibrate_inlier_scale` for this sequence length.')


def _validate(x, inlier_scale, params, zero_point) -> None:
  if not isinstance(params, ActQuantParams):
    raise TypeError(f'act_quant: params must be an ActQuantParams, got {type(params).__name__}.')
  if x.ndim != 3 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f'act_quant: x must be a float (B, L, C) array, got {x.dtype}{x.shape}.')
  length = x.shape[1]
  if inlier_scale.shape != (length,):
    raise ValueError(f'act_quant: inlier_scale must have shape ({length},) (one static step per '
                     f'time step), got {inlier_scale.shape}; recalibrate for this sequence '
                     'length.')
  _check_zero_point(zero_point, params, length)


def with_xla_fallback(implementation):
  """'triton' as the chain ('triton', 'xla'): the kernel where it covers a spec, its XLA
  reference elsewhere (what a model asking for the Triton kernels means); others as given."""
  return ('triton', 'xla') if implementation == 'triton' else implementation


def _static_args(params: ActQuantParams, batch: int, length: int, channels: int,
                 cfg: ActQuantBlockConfig) -> dict:
  """The kernel's grid and quantizer arguments for these params on a (batch, length,
  channels) input."""
  n_windows = reference.windows(length, params.n_refresh)[0]
  block_c, block_b, num_warps, n_chunks = cfg.resolve(channels, batch, n_windows)
  return dict(code_range=params.code_range,
              k=float(params.k), n_refresh=int(params.n_refresh), std_ddof=int(params.std_ddof),
              detect=params.outliers == 'int', block_c=block_c, block_b=block_b,
              num_warps=num_warps, n_chunks=n_chunks)


def _kernel_args(params: ActQuantParams, x, block_config, interpret):
  """The kernel's static arguments for these params and this input."""
  cfg = block_config or ActQuantBlockConfig()
  return dict(_static_args(params, *x.shape, cfg), interpret=compat.resolve_interpret(interpret),
              unroll=cfg.unroll)


def act_quant(x, inlier_scale, params: ActQuantParams, zero_point=None, *,
              outlier_mask: bool = True, implementation=None, interpret: bool | None = None,
              block_config: ActQuantBlockConfig | None = None) -> IntActivation:
  """Quantizes activations x (B, L, C) with static per-step scales (L,); see module docstring.
  `implementation`: None, a name or a fallback chain (`_dispatch`). `interpret=None` runs the
  Triton kernel in the Pallas interpreter unless JAX is on a GPU. `outlier_mask=False` leaves
  the mask out (None) where the kernel runs: the codes say all a GEMM or a dequantize needs,
  and the mask is a byte per element to write."""
  _validate(x, inlier_scale, params, zero_point)
  channels = x.shape[2]
  if DISPATCH.choose(implementation, params, channels) == 'xla':
    return reference.act_quant_xla(producers.materialize(x), inlier_scale, params, zero_point)
  q_in, q_out, o_scale, mask, scale, o_zero = pallas_triton.act_quant(
      x, inlier_scale, zero_point, trigger=params.trigger, with_mask=outlier_mask,
      **_kernel_args(params, x, block_config, interpret))
  in_zero = None if params.symmetric else zero_point.astype(jnp.int32)
  return IntActivation(inlier_q=q_in, inlier_scale=scale, inlier_zero_point=in_zero,
                       outlier_q=q_out, outlier_scale=o_scale, outlier_zero_point=o_zero,
                       outlier_mask=mask)


def act_quant_dequantized(x, inlier_scale, params: ActQuantParams, zero_point=None, *,
                          out_dtype=None, implementation=None, interpret: bool | None = None,
                          block_config: ActQuantBlockConfig | None = None):
  """dequantize(act_quant(x)) in out_dtype (x's by default): what a site that feeds a float
  consumer (Δ, B, C into the selective scan) needs. Where the kernel runs (per-sample trigger
  or no outliers) it is one pass that writes only the result; elsewhere the codes, then
  `reference.dequantize`. Equal to the two-step form bit for bit (the code of 0 in one term
  makes the sum exact). A producer is materialized first (its consumer reads x anyway)."""
  x = producers.materialize(x)
  _validate(x, inlier_scale, params, zero_point)
  out_dtype = jnp.dtype(out_dtype or x.dtype)
  one_pass = params.outliers != 'int' or params.trigger == 'sample'
  if not one_pass or DISPATCH.choose(implementation, params, x.shape[2]) == 'xla':
    q = act_quant(x, inlier_scale, params, zero_point, outlier_mask=False,
                  implementation=implementation, interpret=interpret, block_config=block_config)
    return reference.dequantize(q).astype(out_dtype)
  return pallas_triton.act_quant_dequantized(
      x, inlier_scale, zero_point, out_dtype=out_dtype,
      **_kernel_args(params, x, block_config, interpret))


class SegmentSite(NamedTuple):
  """One channel segment of `act_quant_segments`' input and its quantizer: the next `width`
  channels, on the static steps `inlier_scale` (L,) (and zero points for an asymmetric grid);
  `dequantize_to`: a dtype for the dequantized values (a site with a float consumer), or None
  for the codes (a Linear's input)."""
  width: int
  inlier_scale: Any
  params: ActQuantParams
  zero_point: Any = None
  dequantize_to: Any = None


def _segments_unsupported(sites) -> str | None:
  """Why the sites' specs cannot share one kernel launch (None when they can)."""
  for i, site in enumerate(sites):
    reason = kernel_unsupported_reason(site.params, site.width)
    if reason is None and site.params.outliers == 'int' and site.params.trigger != 'sample':
      reason = f"trigger={site.params.trigger!r} (the shared launch walks samples one by one)"
    if reason is not None:
      return f'site {i}: {reason}'
  return None


def act_quant_segments(x, sites, *, implementation=None, interpret: bool | None = None,
                       block_config: ActQuantBlockConfig | None = None) -> tuple:
  """x (B, L, C) cut along its channels into consecutive segments, each quantized by its own
  site (`SegmentSite`) as `act_quant` (codes, an `IntActivation` without the mask) or
  `act_quant_dequantized` (values) would on that slice; the same codes and values.

  Why: Vim's x_proj output holds dt (dt_proj's input) and the SSM's B and C. Each quantizer
  walks its refresh windows serially, so a launch costs its walk's latency more than its
  lanes' work; the Triton kernel runs every segment in one launch, where their walks overlap,
  and reads each slice in place (no split copies). Where any site's spec is outside that
  kernel (or `implementation` picks XLA) each segment runs alone, dispatched as usual, with
  'triton' taking XLA for a spec its kernel does not cover.
  `block_config` applies to every segment (block_c must then fit the widest)."""
  sites = tuple(sites)
  if not sites:
    raise ValueError('act_quant_segments: give at least one SegmentSite.')
  for site in sites:
    _validate(x, site.inlier_scale, site.params, site.zero_point)
  widths = [site.width for site in sites]
  if sum(widths) != x.shape[2]:
    raise ValueError(f'act_quant_segments: the widths {widths} do not add up to the '
                     f'{x.shape[2]} channels of x; give one site per slice of x.')
  one_launch = (_segments_unsupported(sites) is None
                and DISPATCH.choose(implementation, sites[0].params, sites[0].width) != 'xla'
                and _segments(x, sites, block_config))
  if not one_launch:
    return _segments_one_by_one(x, sites, implementation, interpret, block_config)
  segments, num_warps = one_launch
  outs = pallas_triton.act_quant_segments(
      x, tuple(site.inlier_scale for site in sites), tuple(site.zero_point for site in sites),
      segments=segments, num_warps=num_warps,
      interpret=compat.resolve_interpret(interpret))
  results = []
  for site, out in zip(sites, outs):
    if site.dequantize_to is not None:
      results.append(out)
      continue
    q_in, q_out, o_scale, scale, o_zero = out
    in_zero = None if site.params.symmetric else site.zero_point.astype(jnp.int32)
    results.append(IntActivation(inlier_q=q_in, inlier_scale=scale, inlier_zero_point=in_zero,
                                 outlier_q=q_out, outlier_scale=o_scale,
                                 outlier_zero_point=o_zero, outlier_mask=None))
  return tuple(results)


def _segments(x, sites, block_config):
  """(the kernel's static segments, warps), or None where a segment's tiles would reach past
  the end of x (a segment narrower than its 16-lane tile at the end of the channels)."""
  batch, length, channels = x.shape
  cfg = block_config or ActQuantBlockConfig()
  segments, warps, offset = [], [], 0
  for site in sites:
    args = _static_args(site.params, batch, length, site.width, cfg)
    if offset + args['block_c'] * args['n_chunks'] > channels:
      return None
    offset += site.width
    warps.append(args.pop('num_warps'))
    segments.append(pallas_triton.Segment(
        width=site.width, symmetric=site.params.symmetric,
        dequantize_to=None if site.dequantize_to is None else jnp.dtype(site.dequantize_to),
        **args))
  return tuple(segments), max(warps)


def _segments_one_by_one(x, sites, implementation, interpret, block_config) -> tuple:
  """`act_quant_segments` as one call per segment (its XLA form, and the fallback)."""
  x = producers.materialize(x)
  kw = dict(implementation=with_xla_fallback(implementation), interpret=interpret,
            block_config=block_config)
  results, start = [], 0
  for site in sites:
    part = x[:, :, start:start + site.width]
    start += site.width
    if site.dequantize_to is not None:
      results.append(act_quant_dequantized(part, site.inlier_scale, site.params,
                                           site.zero_point, out_dtype=site.dequantize_to, **kw))
    else:
      results.append(act_quant(part, site.inlier_scale, site.params, site.zero_point,
                               outlier_mask=False, **kw)._replace(outlier_mask=None))
  return tuple(results)
