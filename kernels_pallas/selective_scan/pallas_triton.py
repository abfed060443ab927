"""Fused Mamba selective scan as a Pallas kernel on the Triton backend (GPU; CPU via interpret).

One program per (block of `block_d` channels, batch row); it runs the whole recurrence for its
channels with the fp32 state in registers and writes y (and, only when asked for, every fp32
state, in a (B, L, N, D) layout whose rows are contiguous across a warp's threads):

    dt  = softplus(delta_t + delta_bias)                 (BD,)     per step
    h   = exp2(dt * A log2(e)) * h + (dt u_t) B_t        (N, BD)   fp32 state, in registers
    y_t = (sum_n h C_t + D u_t) * SiLU(z_t)              (BD,)     stored in u.dtype

Design, aimed at the H100 (what the compiled code looks like, and what to measure: NOTES.md):
  * One channel per thread. The block is split into groups of 32 * num_warps channels, each
    with an (N, group) state tile whose default Triton layout gives every thread one channel's
    N states: the C readout (a sum over N) is a register reduction, with no shuffles and no
    shared memory. A is loaded row by row into that layout (one 2D load would be vectorised
    along channels and make Triton split N over 4 threads, i.e. shuffles every step).
    Several groups per program (block_d > 32 * num_warps) = several channels per thread,
    sharing each step's B_t/C_t loads.
  * exp2 with log2(e) folded into A once per call: one MUFU ex2 per state element instead of
    libdevice expf. softplus is branch-free (libdevice log1pf branches, which would cut every
    unrolled step into basic blocks).
  * B and C are cast to fp32 before the kernel: every thread needs all N of them each step, and
    converting bf16 in the loop was ~20% of its instructions (in a model the cast fuses into
    the x_proj output).
  * Time walks in chunks of `chunk_t` unrolled steps; a `fori_loop` covers the full chunks and
    the `L % chunk_t` remainder is an unrolled tail, so no time step needs a mask. Each chunk
    issues its B_t/C_t loads (L2-resident: all channel blocks of a row read them) up front.
    With num_stages >= 2 the u/delta/z rows (the HBM stream) of chunk c + 1 are loaded before
    chunk c is computed (register double-buffering in the loop carry); with num_stages = 1
    they are loaded at the start of their own chunk.
  * `reverse=True` indexes time backwards (t = L - 1 - k); no flipped copy is made.
  * D not a multiple of block_d: the last block loads with a channel mask (padded channels see
    u = A = 0, so their state stays 0) and stores with it. N not a power of 2 is padded the
    same way (B = C = 0 in the padding).
  * Grid is (channel blocks, batch) with channel blocks fastest: programs launched together
    read the same B_t/C_t rows, which then come from L2.

With `mean_with` (another direction's output, (B, L, D) in token order) the kernel stores, in
place of y_t, the two directions' mean at token L - 1 - t: Vim's v2 mixer output
(`act_quant.producers.DirectionMean`) formed in the backward scan's epilogue, so the XLA pass
that flips, adds and casts (read 2 x (B, L, D), write 1) never runs; the other output's rows
are prefetched with the activations. Differentiable: the VJP is the unfused composition's.

Differentiation: `jax.custom_vjp`. vjp='reference' differentiates the XLA reference
(`reference.selective_scan_xla`, sequential form); vjp='kernel' (the default: 10.8x faster on
an H100, NOTES.md) re-runs this kernel with its states written out and feeds them to the
Pallas adjoint kernel of `pallas_triton_bwd`. With `return_states` the states are an output,
saved as the residual for vjp='kernel', and their cotangent enters the adjoint recurrence.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from kernels_pallas import _pallas_compat as compat
from kernels_pallas._pallas_compat import pl, plgpu
from kernels_pallas.act_quant import producers
from kernels_pallas import rounding
from kernels_pallas.selective_scan import pallas_triton_bwd
from kernels_pallas.selective_scan import reference
from kernels_pallas.selective_scan import triton_common as common
from kernels_pallas.selective_scan.config import (STATES_LAYOUTS, VJPS, SelectiveScanBlockConfig,
                                                  default_block_config)

def _scan_kernel(*refs, spec: common.KernelSpec):
  """Body of one program: channels [d0, d0 + block_d) of batch row `row`, all L time steps (or,
  split in time, the steps of segment `program_id(2)`).

  The block is `n_groups` groups of `group_d` channels (one channel per thread in each group),
  each with its own (N, group_d) state tile; the groups share the B_t/C_t loads of a step.
  With `spec.segment_ends` the program writes its segment's end state (started from 0) and the
  sum of its Δ (softplus applied) instead of y; with `spec.initial_states` it starts from the
  given state of its segment.
  """
  refs = list(refs)
  u_ref, delta_ref, a_ref, b_ref, c_ref = refs[:5]
  refs = refs[5:]
  skip_ref = refs.pop(0) if spec.has_skip else None
  z_ref = refs.pop(0) if spec.has_gate else None
  bias_ref = refs.pop(0) if spec.has_bias else None
  mean_ref = refs.pop(0) if spec.mean_with else None
  init_ref = refs.pop(0) if spec.initial_states else None
  if spec.segment_ends:
    ends_ref, dt_sum_ref = refs
  else:
    y_ref = refs.pop(0)
    states_out_ref = refs.pop(0) if spec.store_states else None

  f32 = jnp.float32
  gd, n_pad = spec.group_d, spec.n_pad
  groups = range(spec.n_groups)
  layout = common.program_layout(spec)
  row, channels, states = layout.row, layout.channels, layout.states
  channel_ok, state_ok = layout.channel_ok, layout.state_ok
  tile_ok = layout.tile_ok(spec) if spec.store_states or spec.segment_ends else None
  load = common.masked_load
  segment = pl.program_id(2) if spec.segment_length else None
  first = segment * spec.walk_length if spec.segment_length else 0  # first processing index

  load_group = layout.load_group

  def load_states(ref, t):  # (N,) row of B or C at time t
    return load(ref.at[row, common.index(t), states], state_ok)

  a_log2, skip, bias = layout.load_parameters(spec, a_ref, skip_ref, bias_ref)
  time_of = spec.time_of

  def clamped_time(k):
    """Time of processing index k; a traced k is clamped into the sequence: only a prefetch
    past the last chunk, or the last segment's steps past the sequence, reach beyond it, and
    their data is never used."""
    if not isinstance(k, int):
      k = jnp.minimum(k, spec.length - 1)
    return time_of(k)

  def load_activations(k0, count):
    """u, delta, z rows (and `mean_with`'s row at the mirrored token) of `count` steps from
    processing index k0, in the input dtype (bf16 stays packed in registers until used). These
    stream from HBM: the ones worth prefetching."""
    rows = []
    for i in range(count):
      t = clamped_time(k0 + i)
      rows.append(dict(
          u=[load_group(u_ref, g, row, t) for g in groups],
          delta=[load_group(delta_ref, g, row, t) for g in groups],
          z=[load_group(z_ref, g, row, t) if spec.has_gate else None for g in groups],
          other=[load_group(mean_ref, g, row, spec.length - 1 - t) if spec.mean_with else None
                 for g in groups]))
    return rows

  def load_state_rows(k0, count):
    """B_t, C_t rows of `count` steps; every channel block of the batch row reads them, so
    they come from L2 and are loaded at the start of their chunk, not prefetched."""
    return [dict(b=load_states(b_ref, clamped_time(k0 + i)),
                 c=None if spec.segment_ends else load_states(c_ref, clamped_time(k0 + i)))
            for i in range(count)]

  def step_dt(g, x, valid):
    """Group g's Δ at one step (softplus applied); 0 at a masked step, which leaves the state
    as it is (decay 1, no input)."""
    dt = x['delta'][g].astype(f32)
    if bias[g] is not None:
      dt = dt + bias[g]
    if spec.delta_softplus:
      dt = common.softplus(dt)
    return dt if valid is None else jnp.where(valid, dt, 0.0)

  def group_step(h, g, x, dt):
    """One time step of group g: new (N, group_d) state and the (group_d,) output row (None
    when only the segment's end state is wanted)."""
    u = x['u'][g].astype(f32)
    decay = jnp.exp2(dt[None, :] * a_log2[g])
    h = decay * h + x['b'].astype(f32)[:, None] * (dt * u)[None, :]
    if spec.segment_ends:
      return h, None
    y = jnp.sum(h * x['c'].astype(f32)[:, None], axis=0)
    if skip[g] is not None:
      y = y + skip[g] * u
    if spec.has_gate:
      z = x['z'][g].astype(f32)
      y = y * (z * jax.nn.sigmoid(z))
    return h, y

  def run_chunk(carry, k0, activations):
    """The recurrence over one chunk whose first step is processing index k0; the carry is
    (states, Δ sums) per group (the sums only for `segment_ends`)."""
    state_rows = load_state_rows(k0, len(activations))
    hs, sums = list(carry[0]), list(carry[1])
    for i, (x, bc) in enumerate(zip(activations, state_rows)):
      x = dict(x, **bc)
      valid = (k0 + i < spec.length) if spec.mask_time else None
      t = common.index(clamped_time(k0 + i) if spec.mask_time else time_of(k0 + i))
      token = spec.length - 1 - t if spec.mean_with else t
      for g in groups:
        dt = step_dt(g, x, valid)
        hs[g], y = group_step(hs[g], g, x, dt)
        if spec.segment_ends:
          sums[g] = sums[g] + dt
          continue
        if spec.mean_with:  # y as stored, averaged with the other direction's stored output;
          # the store's conversion rounds the mean (`DirectionMean.kernel_form` rounds it on
          # the bits instead, as act_quant uses the value in fp32)
          y = (x['other'][g].astype(f32) + rounding.rounded_to(y, y_ref.dtype)) * 0.5
        plgpu.store(y_ref.at[row, token, channels[g]], y.astype(y_ref.dtype),
                    mask=common.and_masks(channel_ok[g], valid, (gd,)))
        if spec.store_states:
          plgpu.store(states_out_ref.at[row, t, states, channels[g]], hs[g],
                      mask=common.and_masks(tile_ok[g], valid, (n_pad, gd)))
    return tuple(hs), tuple(sums)

  def initial_state(g):
    if not spec.initial_states:
      return jnp.zeros((n_pad, gd), f32)
    return common.tile_from_rows(
        [layout.load_group(init_ref, g, row, segment, n) for n in range(spec.n_state)], n_pad)

  ct = spec.chunk_t
  carry = (tuple(initial_state(g) for g in groups),
           tuple(jnp.zeros((gd,), f32) if spec.segment_ends else None for g in groups))
  n_chunks, tail = divmod(spec.walk_length, ct)
  if n_chunks and spec.prefetch:
    # Register double-buffering: chunk c + 1's activations load before chunk c is computed.
    def body(c, loop_carry):
      carry, activations = loop_carry
      next_activations = load_activations(first + (c + 1) * ct, ct)
      return run_chunk(carry, first + c * ct, activations), next_activations

    carry, _ = jax.lax.fori_loop(0, n_chunks, body, (carry, load_activations(first, ct)))
  elif n_chunks:
    carry = jax.lax.fori_loop(
        0, n_chunks,
        lambda c, carry: run_chunk(carry, first + c * ct, load_activations(first + c * ct, ct)),
        carry)
  if tail:
    carry = run_chunk(carry, first + n_chunks * ct,
                      load_activations(first + n_chunks * ct, tail))
  if spec.segment_ends:
    for g in groups:
      plgpu.store(ends_ref.at[row, segment, states, channels[g]], carry[0][g], mask=tile_ok[g])
      plgpu.store(dt_sum_ref.at[row, segment, channels[g]], carry[1][g], mask=channel_ok[g])


def _check_inputs(u, delta, A, B, C, D, z, delta_bias):
  """Shape/dtype checks with errors that say what to pass instead."""
  if u.ndim != 3:
    raise ValueError(f'selective_scan(triton): u must be (batch, length, channels), got {u.shape}.')
  batch, length, channels = u.shape
  if delta.shape != u.shape:
    raise ValueError(f'selective_scan(triton): delta must have u\'s shape {u.shape}, '
                     f'got {delta.shape}.')
  if A.ndim != 2 or A.shape[0] != channels:
    raise ValueError(f'selective_scan(triton): A must be (channels={channels}, n_state), '
                     f'got {A.shape}.')
  n_state = A.shape[1]
  for name, x in (('B', B), ('C', C)):
    if x.shape != (batch, length, n_state):
      raise ValueError(f'selective_scan(triton): {name} must be (batch, length, n_state) = '
                       f'{(batch, length, n_state)}, got {x.shape}. Input-independent (D, N) '
                       f'B/C are not supported; broadcast them to (batch, length, n_state).')
  if z is not None and z.shape != u.shape:
    raise ValueError(f'selective_scan(triton): z must have u\'s shape {u.shape}, got {z.shape}.')
  for name, x in (('D', D), ('delta_bias', delta_bias)):
    if x is not None and x.shape != (channels,):
      raise ValueError(f'selective_scan(triton): {name} must be ({channels},), got {x.shape}.')
  for name, x in (('u', u), ('delta', delta), ('A', A), ('B', B), ('C', C), ('D', D), ('z', z),
                  ('delta_bias', delta_bias)):
    if x is not None and not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f'selective_scan(triton): {name} must be floating point, got {x.dtype}.')
  if length == 0 or batch == 0 or channels == 0:
    raise ValueError(f'selective_scan(triton): empty input {u.shape}.')


@functools.partial(jax.jit, static_argnames=('delta_softplus', 'reverse', 'interpret',
                                             'block_config', 'store_states'))
def _forward(u, delta, A, B, C, D, z, delta_bias, *, delta_softplus: bool, reverse: bool,
             interpret: bool, block_config: SelectiveScanBlockConfig, store_states: bool = False,
             mean_with=None):
  """y, and with `store_states` also the fp32 states in the kernel's (B, L, N, D) layout (a
  thread owns one channel, so a state row is contiguous across the threads of a warp).
  `mean_with`: y's mean with that output, in token order (module docstring). With
  `block_config.time_segments` > 1: two launches and a carry pass (`_segment_starts`)."""
  batch, length, channels = u.shape
  spec = common.kernel_spec(u, A, D, z, delta_bias, delta_softplus=delta_softplus,
                            reverse=reverse, block_config=block_config, store_states=store_states,
                            mean_with=mean_with is not None)
  a_b_c = common.kernel_a_b_c(A, B, C)
  starts = ([_segment_starts(u, delta, a_b_c, delta_bias, spec, block_config, interpret)]
            if spec.initial_states else [])
  operands = ([u, delta, *a_b_c] + [x for x in (D, z, delta_bias, mean_with) if x is not None]
              + starts)
  out_shape = jax.ShapeDtypeStruct(u.shape, u.dtype)
  if store_states:
    out_shape = (out_shape, jax.ShapeDtypeStruct((batch, length, A.shape[1], channels),
                                                 jnp.float32))
  name = ('selective_scan_fwd_states' if store_states else
          'selective_scan_fwd_mean' if mean_with is not None else 'selective_scan_fwd')
  return _launch(spec, block_config, batch, out_shape, name, interpret, operands)


def _launch(spec, block_config, batch, out_shape, name, interpret, operands):
  """One pallas_call of the forward kernel: grid (channel blocks, batch rows[, segments])."""
  grid = (pl.cdiv(spec.channels, block_config.block_d), batch)
  if spec.segment_length:
    grid += (spec.n_segments,)
  compat.filter_triton_deprecation()
  return pl.pallas_call(
      functools.partial(_scan_kernel, spec=spec),
      out_shape=out_shape,
      grid=grid,
      interpret=interpret,
      name=name,
      compiler_params=compat.triton_compiler_params(block_config.num_warps,
                                                    block_config.num_stages),
  )(*operands)


def _segment_starts(u, delta, a_b_c, delta_bias, spec, block_config, interpret):
  """Each segment's starting state, (B, segments, N, D) fp32: one launch walks every segment
  from 0 in parallel (its end state h_c and Δ sum S_c, no readout), then the segments are
  chained in order: start_0 = 0, start_{c+1} = exp2(S_c A log2 e) start_c + h_c (a segment's
  decays multiply to exp of its Δ sum times A). The chain is (segments - 1) small elementwise
  steps that XLA fuses."""
  batch, _, channels = u.shape
  ends_spec = dataclasses.replace(spec, has_skip=False, has_gate=False, mean_with=False,
                                  store_states=False, segment_ends=True)
  n_seg = spec.n_segments
  out_shape = (jax.ShapeDtypeStruct((batch, n_seg, spec.n_state, channels), jnp.float32),
               jax.ShapeDtypeStruct((batch, n_seg, channels), jnp.float32))
  operands = [u, delta, *a_b_c] + ([delta_bias] if delta_bias is not None else [])
  ends, dt_sums = _launch(ends_spec, block_config, batch, out_shape, 'selective_scan_segment_ends',
                          interpret, operands)
  a_log2 = a_b_c[0]  # (N, D)
  starts = [jnp.zeros_like(ends[:, 0])]
  for c in range(n_seg - 1):
    starts.append(jnp.exp2(dt_sums[:, c, None, :] * a_log2) * starts[-1] + ends[:, c])
  return jnp.stack(starts, axis=1)


def _public_states(states_bnd, layout: str):
  """(B, L, N, D) kernel layout -> the API's (B, L, D, N) ('bldn'), or as is ('blnd')."""
  return jnp.swapaxes(states_bnd, 2, 3) if layout == 'bldn' else states_bnd


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10, 11, 12, 13, 14))
def _selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, interpret,
                    block_config, vjp, return_states, states_layout):
  out = _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus=delta_softplus,
                 reverse=reverse, interpret=interpret, block_config=block_config,
                 store_states=return_states)
  if return_states:
    y, states = out
    return y, _public_states(states, states_layout)
  return out


def _selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, interpret,
                        block_config, vjp, return_states, states_layout):
  """Saves the inputs only (no (B, L, D, N) residual per layer) unless the states are an
  output anyway and the kernel backward can reuse them."""
  primals = (u, delta, A, B, C, D, z, delta_bias)
  if not return_states:
    y = _selective_scan(*primals, delta_softplus, reverse, interpret, block_config, vjp, False,
                        states_layout)
    return y, (primals, None)
  y, states_bnd = _forward(*primals, delta_softplus=delta_softplus, reverse=reverse,
                           interpret=interpret, block_config=block_config, store_states=True)
  saved_states = states_bnd if vjp == 'kernel' else None
  return (y, _public_states(states_bnd, states_layout)), (primals, saved_states)


def _selective_scan_bwd(delta_softplus, reverse, interpret, block_config, vjp, return_states,
                        states_layout, residuals, cotangents):
  """vjp='reference': the VJP of the sequential XLA reference at the saved inputs (it keeps no
  (B, L, D, N) intermediates beyond the per-step states). vjp='kernel': the Pallas adjoint
  kernel of `pallas_triton_bwd`, on states recomputed by the forward kernel (or saved, when
  they were an output)."""
  primals, states_bnd = residuals
  y_bar, states_bar = cotangents if return_states else (cotangents, None)
  if vjp == 'reference':
    ref = functools.partial(reference.selective_scan_xla, delta_softplus=delta_softplus,
                            reverse=reverse, return_states=return_states, sequential=True)
    _, ref_vjp = jax.vjp(ref, *primals)
    if states_bar is not None and states_layout == 'blnd':
      cotangents = (y_bar, jnp.swapaxes(states_bar, 2, 3))
    return ref_vjp(cotangents)
  if states_bnd is None:
    _, states_bnd = _forward(*primals, delta_softplus=delta_softplus, reverse=reverse,
                             interpret=interpret, block_config=block_config, store_states=True)
  states_bar_bnd = states_bar
  if states_bar is not None and states_layout == 'bldn':
    states_bar_bnd = jnp.swapaxes(states_bar, 2, 3)
  return pallas_triton_bwd.backward(
      *primals, states_bnd, y_bar, states_bar_bnd, delta_softplus=delta_softplus,
      reverse=reverse, interpret=interpret, block_config=block_config)


_selective_scan.defvjp(_selective_scan_fwd, _selective_scan_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(9, 10, 11, 12, 13))
def _selective_scan_mean(u, delta, A, B, C, D, z, delta_bias, mean_with, delta_softplus, reverse,
                         interpret, block_config, vjp):
  return _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus=delta_softplus,
                  reverse=reverse, interpret=interpret, block_config=block_config,
                  mean_with=mean_with)


def _selective_scan_mean_fwd(*args):
  return _selective_scan_mean(*args), args[:9]


def _selective_scan_mean_bwd(delta_softplus, reverse, interpret, block_config, vjp, primals,
                             out_bar):
  """The VJP of the unfused composition (scan, then `DirectionMean`): the mean is linear, so
  its backward is a flip and a halving that XLA fuses; nothing is gained by a fused form."""
  def unfused(*p):
    y = _selective_scan(*p[:8], delta_softplus, reverse, interpret, block_config, vjp, False,
                        'bldn')
    return producers.DirectionMean(p[8], y, y.dtype).materialize()
  return jax.vjp(unfused, *primals)[1](out_bar)


_selective_scan_mean.defvjp(_selective_scan_mean_fwd, _selective_scan_mean_bwd)


def check_options(u, *, vjp, states_layout, mean_with, return_states):
  """Errors for options no implementation accepts (every implementation's check)."""
  if vjp not in VJPS:
    raise ValueError(f'selective_scan: unknown vjp {vjp!r}; choose one of {VJPS}.')
  if states_layout not in STATES_LAYOUTS:
    raise ValueError(f'selective_scan: states_layout must be one of {STATES_LAYOUTS}, got '
                     f'{states_layout!r}.')
  _check_mean_with(mean_with, u, return_states)


def _check_mean_with(mean_with, u, return_states):
  """Errors for a `mean_with` that cannot be the other direction's output (the XLA
  implementations form the same mean)."""
  if mean_with is None:
    return
  if return_states:
    raise ValueError('selective_scan: mean_with replaces y by a mean of two directions; '
                     'it cannot be combined with return_states (whose y is this direction\'s).')
  if mean_with.shape != u.shape or not jnp.issubdtype(mean_with.dtype, jnp.floating):
    raise ValueError(f'selective_scan: mean_with must be a float array of u\'s shape '
                     f'{u.shape} (the other direction\'s output, token order), got '
                     f'{mean_with.dtype}{list(mean_with.shape)}.')


def _resolved_block_config(u, block_config):
  if block_config is None:
    batch, length, channels = u.shape
    return default_block_config(channels, u.dtype, batch=batch, length=length)
  if not isinstance(block_config, SelectiveScanBlockConfig):
    raise TypeError('selective_scan(triton): block_config must be a SelectiveScanBlockConfig, '
                    f'got {type(block_config).__name__}.')
  return block_config


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, *,
                   delta_softplus: bool = True, reverse: bool = False,
                   return_states: bool = False, vjp: str = 'kernel',
                   interpret: bool | None = None,
                   block_config: SelectiveScanBlockConfig | None = None,
                   states_layout: str = 'bldn', mean_with=None):
  """Fused selective scan; see the module docstring. Returns y (B, L, D) in u.dtype, and with
  `return_states` also the fp32 states (B, L, D, N), written by the kernel (in its own
  (B, L, N, D) layout with states_layout='blnd': no transpose). With `mean_with` (the other
  scan direction's output, (B, L, D) in token order) it returns
  `DirectionMean(mean_with, y, u.dtype).materialize()` instead of y, formed in the epilogue.

  u, delta, z: (B, L, D); B, C: (B, L, N); A: (D, N); D, delta_bias: (D,); D, z, delta_bias may
  be None. `vjp`: 'reference' differentiates through the sequential XLA reference; 'kernel'
  through the Pallas backward kernel (the default; 10.8x faster on an H100). `interpret=None`
  interprets off-GPU. `block_config=None` uses the default for (D, u.dtype, B, L): small batches
  split the sequence into segments walked in parallel (`config.time_segments_for`).
  """
  _check_inputs(u, delta, A, B, C, D, z, delta_bias)
  check_options(u, vjp=vjp, states_layout=states_layout, mean_with=mean_with,
                return_states=return_states)
  block_config = _resolved_block_config(u, block_config)
  if mean_with is not None:
    return _selective_scan_mean(u, delta, A, B, C, D, z, delta_bias, mean_with,
                                bool(delta_softplus), bool(reverse),
                                compat.resolve_interpret(interpret), block_config, vjp)
  return _selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                         bool(reverse), compat.resolve_interpret(interpret), block_config, vjp,
                         bool(return_states), states_layout)
