"""Backward (adjoint) kernel of the fused selective scan: Pallas on the Triton backend.

Replaces the VJP through the XLA `lax.scan` reference (thousands of tiny per-step kernels) by
two launches: the forward kernel re-run with its fp32 states written out ((B, L, N, D): a
thread owns a channel, so a state row is contiguous across a warp), then this kernel. One
program per (block of `block_d` channels, batch row) walks the steps in the reverse of the
forward's processing order (so `reverse=True` just flips the time index, as in the forward)
with the adjoint state lam (N, block) in fp32 registers. With `next` = the following step of
the forward:

    g_t    = dy_t SiLU(z_t)                                  cotangent of C_t.h_t + D u_t
    lam_t  = dA_next lam_next + C_t g_t + dstates_t          cotangent of h_t
    dC_t   = sum_d g_t h_t ,  dB_t = sum_d lam_t dt_t u_t     (N,) per program, summed in XLA
    du_t   = dt_t sum_n lam_t B_t + D g_t
    ddt_t  = u_t sum_n lam_t B_t + sum_n lam_t h_prev dA_t A
    dA    += lam_t h_prev dA_t dt_t ;  dD += g_t u_t ;  ddelta_t = ddt_t sigmoid(delta_t + bias)

dA, dD and d(delta_bias) accumulate in registers over time and are written once per program as
(B, ...) partials; dB_t, dC_t are summed over the program's channels (a cross-thread reduction
per step) and written as (channel blocks, B, L, N) partials. XLA adds the partials up in fp32.
h_t comes from the previous step's h_prev (one (N, block) state load per step). The first
forward step has h_prev = 0; it is always the last, statically unrolled step here, so the loop
needs no condition. Padded channels and states load as 0, which keeps their adjoint 0.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from kernels_pallas import _pallas_compat as compat
from kernels_pallas._pallas_compat import pl, plgpu
from kernels_pallas.selective_scan import triton_common as common
from kernels_pallas.selective_scan.config import SelectiveScanBlockConfig

# `triton_common` owns the kernel spec and the in-kernel helpers both kernels share.


def _adjoint_kernel(*refs, spec: common.KernelSpec, has_states_grad: bool):
  """Body of one program: channels [d0, d0 + block_d) of batch row `row`, all L steps backwards."""
  refs = list(refs)
  take = lambda present=True: refs.pop(0) if present else None
  u_ref, delta_ref, a_ref, b_ref, c_ref = (take() for _ in range(5))
  skip_ref, z_ref, bias_ref = take(spec.has_skip), take(spec.has_gate), take(spec.has_bias)
  states_ref, dy_ref, dstates_ref = take(), take(), take(has_states_grad)
  du_ref, ddelta_ref, dz_ref = take(), take(), take(spec.has_gate)
  db_ref, dc_ref, da_ref = take(), take(), take()
  dskip_ref, dbias_ref = take(spec.has_skip), take(spec.has_bias)
  assert not refs, refs

  f32 = jnp.float32
  gd, n_pad = spec.group_d, spec.n_pad
  groups = range(spec.n_groups)
  block, layout = pl.program_id(0), common.program_layout(spec)
  row, channels, states = layout.row, layout.channels, layout.states
  channel_ok, state_ok = layout.channel_ok, layout.state_ok
  tile_ok = layout.tile_ok(spec)
  load = common.masked_load

  def store(ref_view, value, mask):
    plgpu.store(ref_view, value.astype(ref_view.dtype), mask=mask)

  group_row = layout.group_view

  def state_tile(ref, t, g):  # (N, group_d) fp32 tile of a (B, L, N, D) array at time t
    return load(ref.at[row, common.index(t), states, channels[g]], tile_ok[g])

  a_log2, skip, bias = layout.load_parameters(spec, a_ref, skip_ref, bias_ref)
  time_of = spec.time_of

  def step(carry, k):
    """Adjoint of forward step k; carry = per group (lam_next dA_next, h_k, accumulators)."""
    t = common.index(time_of(k))
    b_t = load(b_ref.at[row, t, states], state_ok)
    c_t = load(c_ref.at[row, t, states], state_ok)
    db_t = jnp.zeros((n_pad,), f32)
    dc_t = jnp.zeros((n_pad,), f32)
    new_carry = []
    for g in groups:
      lam_in, h, acc_a, acc_skip, acc_bias = carry[g]
      # h_prev of the first forward step is 0; k is a Python int exactly there.
      h_prev = (jnp.zeros_like(h) if isinstance(k, int) and k == 0
                else state_tile(states_ref, time_of(k - 1), g))
      u = load(group_row(u_ref, g, row, t), channel_ok[g]).astype(f32)
      dt_raw = load(group_row(delta_ref, g, row, t), channel_ok[g]).astype(f32)
      dy = load(group_row(dy_ref, g, row, t), channel_ok[g]).astype(f32)
      if spec.has_bias:
        dt_raw = dt_raw + bias[g]
      dt = common.softplus(dt_raw) if spec.delta_softplus else dt_raw
      decay = jnp.exp2(dt[None, :] * a_log2[g])
      if spec.has_gate:
        z = load(group_row(z_ref, g, row, t), channel_ok[g]).astype(f32)
        y_ssm = jnp.sum(h * c_t[:, None], axis=0)
        if spec.has_skip:
          y_ssm = y_ssm + skip[g] * u
        sig = jax.nn.sigmoid(z)
        g_out = dy * (z * sig)
        store(group_row(dz_ref, g, row, t), dy * y_ssm * sig * (1.0 + z * (1.0 - sig)),
              channel_ok[g])
      else:
        g_out = dy
      lam = lam_in + c_t[:, None] * g_out[None, :]
      if has_states_grad:
        lam = lam + state_tile(dstates_ref, t, g)
      dc_t = dc_t + jnp.sum(h * g_out[None, :], axis=1)
      db_t = db_t + jnp.sum(lam * (dt * u)[None, :], axis=1)
      lam_b = jnp.sum(lam * b_t[:, None], axis=0)
      du = dt * lam_b
      if spec.has_skip:
        du = du + skip[g] * g_out
        acc_skip = acc_skip + g_out * u
      d_decay = lam * h_prev * decay  # cotangent of dA_t, times dA_t
      ddt = u * lam_b + common.LN2 * jnp.sum(d_decay * a_log2[g], axis=0)  # A = A log2(e) ln 2
      acc_a = acc_a + d_decay * dt[None, :]
      ddelta = ddt * jax.nn.sigmoid(dt_raw) if spec.delta_softplus else ddt
      if spec.has_bias:
        acc_bias = acc_bias + ddelta
      store(group_row(du_ref, g, row, t), du, channel_ok[g])
      store(group_row(ddelta_ref, g, row, t), ddelta, channel_ok[g])
      new_carry.append((decay * lam, h_prev, acc_a, acc_skip, acc_bias))
    store(db_ref.at[block, row, t, states], db_t, state_ok)
    store(dc_ref.at[block, row, t, states], dc_t, state_ok)
    return tuple(new_carry)

  zeros_tile = jnp.zeros((n_pad, gd), f32)
  zeros_row = jnp.zeros((gd,), f32)
  last = spec.length - 1
  carry = tuple((zeros_tile, state_tile(states_ref, time_of(last), g), zeros_tile, zeros_row,
                 zeros_row) for g in groups)
  # Steps last .. 1 in chunks of chunk_t unrolled steps, the remainder unrolled, then step 0.
  ct = spec.chunk_t
  n_chunks, tail = divmod(last, ct)

  def chunk(c, carry):
    for i in range(ct):
      carry = step(carry, last - c * ct - i)
    return carry

  if n_chunks:
    carry = jax.lax.fori_loop(0, n_chunks, chunk, carry)
  for k in range(tail, -1, -1):
    carry = step(carry, k)

  for g in groups:
    _, _, acc_a, acc_skip, acc_bias = carry[g]
    store(da_ref.at[row, states, channels[g]], acc_a, tile_ok[g])
    if spec.has_skip:
      store(group_row(dskip_ref, g, row), acc_skip, channel_ok[g])
    if spec.has_bias:
      store(group_row(dbias_ref, g, row), acc_bias, channel_ok[g])


@functools.partial(jax.jit, static_argnames=('delta_softplus', 'reverse', 'interpret',
                                             'block_config'))
def backward(u, delta, A, B, C, D, z, delta_bias, states, y_bar, states_bar, *,
             delta_softplus: bool, reverse: bool, interpret: bool,
             block_config: SelectiveScanBlockConfig):
  """Cotangents of (u, delta, A, B, C, D, z, delta_bias), in their dtypes (None for absent ones).

  states: the forward's fp32 states in the kernel layout (B, L, N, D); y_bar: cotangent of y;
  states_bar: cotangent of the states in the same layout, or None.
  """
  batch, length, channels = u.shape
  n_state = A.shape[1]
  # The adjoint walks the whole sequence: the forward's time segments do not apply.
  spec = common.kernel_spec(u, A, D, z, delta_bias, delta_softplus=delta_softplus,
                            reverse=reverse,
                            block_config=dataclasses.replace(block_config, time_segments=1))
  n_blocks = pl.cdiv(channels, block_config.block_d)
  has_states_grad = states_bar is not None
  f32 = jnp.float32
  operands = ([u, delta, *common.kernel_a_b_c(A, B, C)]
              + [x for x in (D, z, delta_bias) if x is not None]
              + [states, y_bar.astype(u.dtype)]
              + ([states_bar.astype(f32)] if has_states_grad else []))
  act = lambda dtype: jax.ShapeDtypeStruct(u.shape, dtype)
  per_row = jax.ShapeDtypeStruct((batch, channels), f32)
  out_shape = ([act(u.dtype), act(delta.dtype)] + ([act(z.dtype)] if z is not None else [])
               + [jax.ShapeDtypeStruct((n_blocks, batch, length, n_state), f32)] * 2
               + [jax.ShapeDtypeStruct((batch, n_state, channels), f32)]
               + [per_row] * ((D is not None) + (delta_bias is not None)))
  compat.filter_triton_deprecation()
  outs = list(pl.pallas_call(
      functools.partial(_adjoint_kernel, spec=spec, has_states_grad=has_states_grad),
      out_shape=out_shape,
      grid=(n_blocks, batch),
      interpret=interpret,
      name='selective_scan_bwd',
      compiler_params=compat.triton_compiler_params(block_config.num_warps,
                                                    block_config.num_stages),
  )(*operands))
  take = lambda present=True: outs.pop(0) if present else None
  du, ddelta, dz = take(), take(), take(z is not None)
  db_blocks, dc_blocks, da_rows = take(), take(), take()
  dskip_rows, dbias_rows = take(D is not None), take(delta_bias is not None)
  d_A = da_rows.sum(0).T.astype(A.dtype)
  d_B = db_blocks.sum(0).astype(B.dtype)
  d_C = dc_blocks.sum(0).astype(C.dtype)
  d_D = None if D is None else dskip_rows.sum(0).astype(D.dtype)
  d_bias = None if delta_bias is None else dbias_rows.sum(0).astype(delta_bias.dtype)
  return du, ddelta, d_A, d_B, d_C, d_D, dz, d_bias
