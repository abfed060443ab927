"""XLA reference of the Mamba selective scan (mamba_ssm `selective_scan_ref` semantics).

Layout is time-major per sample: u, delta, z are (B, L, D); B, C are (B, L, N); A is (D, N).

    delta = softplus(delta + delta_bias)                       (if delta_softplus)
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t   (state (D, N), fp32)
    y_t   = C_t . h_t + D * u_t ;  out = y * SiLU(z)

Two XLA forms: `sequential` (a `lax.scan` that keeps only the running state; the ground
truth, and the fastest to train with) and `associative` (`lax.associative_scan`, parallel
over time). The associative form materialises
(B, L, D, N) fp32 intermediates: 4*B*L*D*N bytes each, a few of them live at once. It is
chunked over channels once that exceeds `max_intermediate_bytes` (the recurrence is
independent per channel, so chunking is exact).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# A (B, L, D, N) fp32 tensor above this size makes the associative scan loop over channel chunks.
DEFAULT_MAX_INTERMEDIATE_BYTES = 1 << 30


def discretize(u, delta, A, B, delta_bias, delta_softplus):
  """Returns (delta after bias/softplus, dA = exp(delta A), dBu = delta B u), all fp32."""
  delta = delta.astype(jnp.float32)
  if delta_bias is not None:
    delta = delta + delta_bias.astype(jnp.float32)
  if delta_softplus:
    delta = jax.nn.softplus(delta)
  dA = jnp.exp(delta[..., None] * A.astype(jnp.float32))
  dBu = (delta * u.astype(jnp.float32))[..., None] * B.astype(jnp.float32)[:, :, None, :]
  return delta, dA, dBu


def readout(h, u, C, D, z, out_dtype):
  """y = C.h + D u, gated by SiLU(z); cast to the input dtype."""
  y = jnp.einsum('bldn,bln->bld', h, C.astype(jnp.float32))
  if D is not None:
    y = y + u.astype(jnp.float32) * D.astype(jnp.float32)
  if z is not None:
    y = y * jax.nn.silu(z.astype(jnp.float32))
  return y.astype(out_dtype)


def _combine(left, right):
  a1, b1 = left
  a2, b2 = right
  return a1 * a2, a2 * b1 + b2


def _states_associative(dA, dBu, reverse):
  _, h = jax.lax.associative_scan(_combine, (dA, dBu), axis=1, reverse=reverse)
  return h


def _scan_sequential(u, delta, A, B, C, D, z, delta_bias, *, delta_softplus, reverse,
                     return_states):
  """`lax.scan` with discretisation and readout inside the step.

  Only the state is live per step, so no (B, L, D, N) tensor is built (unless the
  states are asked for). It is carried as (B, N, D): with the 2·d_model channels minor, the
  step's exp/multiply/add and its readout (a sum over N, not over the 16-wide minor axis)
  vectorise; on 2 CPU cores the Vim-T testbed scan (batch 64, 65 tokens) runs about 1.4x
  faster than with (B, D, N) (BENCHMARKS.md, issue 16). The step is rematerialised in the backward pass, which then keeps
  just the per-step states. This is the training path: several times less HBM traffic than
  the associative form, whose log-depth passes each rewrite the full (B, L, D, N) tensors.
  """
  f32 = jnp.float32
  delta = delta.astype(f32)
  if delta_bias is not None:
    delta = delta + delta_bias.astype(f32)
  if delta_softplus:
    delta = jax.nn.softplus(delta)
  A_nd = A.astype(f32).T   # (N, D): the state is carried as (B, N, D), channels minor

  @jax.checkpoint
  def step(h, inputs):
    d_t, u_t, b_t, c_t = inputs  # (B, D), (B, D), (B, N), (B, N)
    h = jnp.exp(d_t[:, None, :] * A_nd) * h + (d_t * u_t)[:, None, :] * b_t[:, :, None]
    y_t = jnp.sum(h * c_t[:, :, None], axis=1)
    return h, ((y_t, h) if return_states else y_t)

  time_major = lambda x: jnp.moveaxis(x.astype(f32), 1, 0)
  h0 = jnp.zeros((u.shape[0], A.shape[-1], u.shape[2]), f32)
  _, out = jax.lax.scan(step, h0, (time_major(delta), time_major(u), time_major(B),
                                   time_major(C)), reverse=reverse)
  y, hs = out if return_states else (out, None)
  y = jnp.moveaxis(y, 0, 1)
  if D is not None:
    y = y + u.astype(f32) * D.astype(f32)
  if z is not None:
    y = y * jax.nn.silu(z.astype(f32))
  y = y.astype(u.dtype)
  return (y, jnp.swapaxes(jnp.moveaxis(hs, 0, 1), 2, 3)) if return_states else y


def _scan_once(u, delta, A, B, C, D, z, delta_bias, *, delta_softplus, reverse,
               return_states):
  delta, dA, dBu = discretize(u, delta, A, B, delta_bias, delta_softplus)
  h = _states_associative(dA, dBu, reverse)
  y = readout(h, u, C, D, z, u.dtype)
  return (y, h) if return_states else y


def _channel_chunks(batch, length, channels, n_state, max_bytes):
  """Smallest number of equal channel chunks that keeps one (B, L, d, N) fp32 tensor under max_bytes."""
  per_channel = 4 * batch * length * n_state
  for n in range(1, channels + 1):
    if channels % n == 0 and per_channel * (channels // n) <= max_bytes:
      return n
  return channels


def selective_scan_xla(u, delta, A, B, C, D=None, z=None, delta_bias=None, *,
                       delta_softplus=True, reverse=False, return_states=False,
                       sequential=False,
                       max_intermediate_bytes=DEFAULT_MAX_INTERMEDIATE_BYTES):
  """Selective scan in plain XLA. Returns y (B, L, D) [, states (B, L, D, N) fp32]."""
  kw = dict(delta_softplus=delta_softplus, reverse=reverse, return_states=return_states)
  if sequential:
    return _scan_sequential(u, delta, A, B, C, D, z, delta_bias, **kw)
  batch, length, channels = u.shape
  n_chunks = 1 if return_states else _channel_chunks(
      batch, length, channels, A.shape[-1], max_intermediate_bytes)
  if n_chunks == 1:
    return _scan_once(u, delta, A, B, C, D, z, delta_bias, **kw)

  def split(x, axis):  # (..., D, ...) -> (n_chunks, ..., D/n, ...)
    if x is None:
      return None
    x = jnp.moveaxis(x, axis, 0)
    x = x.reshape((n_chunks, channels // n_chunks) + x.shape[1:])
    return jnp.moveaxis(x, 1, axis + 1)

  chunked = (split(u, 2), split(delta, 2), split(A, 0), split(D, 0) if D is not None else None,
             split(z, 2) if z is not None else None,
             split(delta_bias, 0) if delta_bias is not None else None)

  def one(args):
    cu, cdelta, cA, cD, cz, cbias = args
    return _scan_once(cu, cdelta, cA, B, C, cD, cz, cbias, **kw)

  ys = jax.lax.map(one, chunked)  # (n_chunks, B, L, D/n)
  return jnp.moveaxis(ys, 0, 2).reshape(batch, length, channels)
