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

Differentiation: `jax.custom_vjp`. vjp='reference' differentiates the XLA reference
(`reference.selective_scan_xla`, sequential form); vjp='kernel' (the default: 10.8x faster on
an H100, NOTES.md) re-runs this kernel with its states written out and feeds them to the
Pallas adjoint kernel of `pallas_triton_bwd`. With `return_states` the states are an output,
saved as the residual for vjp='kernel', and their cotangent enters the adjoint recurrence.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels_pallas import _pallas_compat as compat
from kernels_pallas._pallas_compat import pl, plgpu
from kernels_pallas.selective_scan import pallas_triton_bwd
from kernels_pallas.selective_scan import reference
from kernels_pallas.selective_scan import triton_common as common
from kernels_pallas.selective_scan.config import (STATES_LAYOUTS, VJPS, SelectiveScanBlockConfig,
                                                  default_block_config)

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
             interpret: bool, block_config: SelectiveScanBlockConfig, store_states: bool = False):
  """y, and with `store_states` also the fp32 states in the kernel's (B, L, N, D) layout (a
  thread owns one channel, so a state row is contiguous across the threads of a warp)."""
  batch, length, channels = u.shape
  spec = common.kernel_spec(u, A, D, z, delta_bias, delta_softplus=delta_softplus, reverse=reverse,
                     block_config=block_config, store_states=store_states)
  operands = [u, delta, *common.kernel_a_b_c(A, B, C)] + [x for x in (D, z, delta_bias) if x is not None]
  out_shape = jax.ShapeDtypeStruct(u.shape, u.dtype)
  if store_states:
    out_shape = (out_shape, jax.ShapeDtypeStruct((batch, length, A.shape[1], channels),
                                                 jnp.float32))
  compat.filter_triton_deprecation()
  return pl.pallas_call(
      functools.partial(_scan_kernel, spec=spec),
      out_shape=out_shape,
      grid=(pl.cdiv(channels, block_config.block_d), batch),
      interpret=interpret,
      name='selective_scan_fwd_states' if store_states else 'selective_scan_fwd',
      compiler_params=compat.triton_compiler_params(block_config.num_warps,
                                                    block_config.num_stages),
  )(*operands)


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


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, *,
                   delta_softplus: bool = True, reverse: bool = False,
                   return_states: bool = False, vjp: str = 'kernel',
                   interpret: bool | None = None,
                   block_config: SelectiveScanBlockConfig | None = None,
                   states_layout: str = 'bldn'):
  """Fused selective scan; see the module docstring. Returns y (B, L, D) in u.dtype, and with
  `return_states` also the fp32 states (B, L, D, N), written by the kernel (in its own
  (B, L, N, D) layout with states_layout='blnd': no transpose).

  u, delta, z: (B, L, D); B, C: (B, L, N); A: (D, N); D, delta_bias: (D,); D, z, delta_bias may
  be None. `vjp`: 'reference' differentiates through the sequential XLA reference; 'kernel'
  through the Pallas backward kernel (the default; 10.8x faster on an H100). `interpret=None`
  interprets off-GPU. `block_config=None` uses the default for (D, u.dtype).
  """
  _check_inputs(u, delta, A, B, C, D, z, delta_bias)
  if states_layout not in STATES_LAYOUTS:
    raise ValueError(f'selective_scan(triton): states_layout={states_layout!r}; choose one of '
                     f'{STATES_LAYOUTS}.')
  if vjp not in VJPS:
    raise ValueError(f'selective_scan(triton): vjp={vjp!r}; choose one of {VJPS}.')
  if block_config is None:
    block_config = default_block_config(u.shape[-1], u.dtype)
  elif not isinstance(block_config, SelectiveScanBlockConfig):
    raise TypeError('selective_scan(triton): block_config must be a SelectiveScanBlockConfig, '
                    f'got {type(block_config).__name__}.')
  return _selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                         bool(reverse), compat.resolve_interpret(interpret), block_config, vjp,
                         bool(return_states), states_layout)
