"""What the forward and the adjoint selective-scan kernels share: the static kernel spec, the
program layout, masked loads and the branch-free softplus. Its own module so that the forward
module can import the adjoint one (for its custom VJP) without a cycle.
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from kernels_pallas._pallas_compat import pl, plgpu
from kernels_pallas.selective_scan.config import SelectiveScanBlockConfig

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class KernelSpec:
  """Static facts the kernel body is specialised on."""
  length: int
  channels: int
  n_state: int
  n_pad: int
  block_d: int
  group_d: int     # channels of one group: 32 * num_warps, one channel per thread
  chunk_t: int
  prefetch: bool   # load the next chunk while computing this one (num_stages >= 2)
  reverse: bool
  delta_softplus: bool
  has_skip: bool
  has_gate: bool
  has_bias: bool
  store_states: bool = False  # also write every fp32 state to a (B, L, N, D) output

  @property
  def n_groups(self) -> int:
    return self.block_d // self.group_d

  @property
  def mask_channels(self) -> bool:
    return self.channels % self.block_d != 0

  @property
  def mask_states(self) -> bool:
    return self.n_pad != self.n_state


def softplus(x):
  """softplus(x) = max(x, 0) + log1p(exp(-|x|)), branch-free and accurate to a few ulp.

  libdevice's log1pf branches, which would split every unrolled step into basic blocks. Here
  log1p(e) for e in (0, 1] uses Goldberg's trick log(w) * e / (w - 1), w = 1 + e, which stays
  accurate for small e (dt_proj biases put softplus inputs near -7, where e ~ 1e-3).
  """
  e = jnp.exp2(-jnp.abs(x) * LOG2E)
  w = 1.0 + e
  log1p_e = jnp.where(w == 1.0, e, jnp.log2(w) * LN2 * (e / (w - 1.0)))
  return jnp.maximum(x, 0.0) + log1p_e


@dataclasses.dataclass(frozen=True)
class ProgramLayout:
  """What one program (channel block, batch row) indexes, shared by the forward and adjoint
  kernels: its batch row, per channel group the channel slice and mask, and the state slice
  and mask (masks None where nothing is padded)."""
  row: object
  channels: list
  channel_ok: list
  states: object
  state_ok: object

  def tile_ok(self, spec):  # per group, the (n_pad, group_d) mask of a state tile
    return [tile_mask(self.state_ok, ok, spec.n_pad, spec.group_d) for ok in self.channel_ok]


def program_layout(spec) -> ProgramLayout:
  gd, d0 = spec.group_d, pl.program_id(0) * spec.block_d
  groups = range(spec.n_groups)
  return ProgramLayout(
      row=pl.program_id(1),
      channels=[pl.ds(d0 + g * gd, gd) for g in groups],
      channel_ok=[(d0 + g * gd + jnp.arange(gd) < spec.channels) if spec.mask_channels else None
                  for g in groups],
      states=pl.ds(0, spec.n_pad),
      state_ok=(jnp.arange(spec.n_pad) < spec.n_state) if spec.mask_states else None)


def masked_load(ref_view, mask):
  """Load in the array's dtype; masked-off elements read as 0."""
  if mask is None:
    return plgpu.load(ref_view)
  return plgpu.load(ref_view, mask=mask, other=0)


def tile_mask(state_ok, channel_ok, n_pad, group_d):
  """Full (n_pad, group_d) mask of a state tile, or None when neither axis is padded."""
  if state_ok is None and channel_ok is None:
    return None
  rows = jnp.ones((n_pad,), bool) if state_ok is None else state_ok
  cols = jnp.ones((group_d,), bool) if channel_ok is None else channel_ok
  return rows[:, None] & cols[None, :]


def tile_from_rows(rows, n_pad):
  """(n_pad, group_d) fp32 tile whose first len(rows) rows are the given (group_d,) rows.

  Used for A: a single 2D load would be vectorised along channels and make Triton split N
  over threads for the whole recurrence (shuffles in the C readout); row loads keep the
  default layout where a thread owns a column (one channel's N states).
  """
  state_ids = jnp.arange(n_pad)[:, None]
  tile = jnp.zeros((n_pad, rows[0].shape[0]), jnp.float32)
  for n, row in enumerate(rows):
    tile = jnp.where(state_ids == n, row.astype(jnp.float32)[None, :], tile)
  return tile


def index(i):
  """Static Python ints as int32 scalars: the Pallas interpreter rejects bare ints in indexers."""
  return jnp.int32(i) if isinstance(i, int) else i


def _scan_kernel(*refs, spec: KernelSpec):
  """Body of one program: channels [d0, d0 + block_d) of batch row `row`, all L time steps.

  The block is `n_groups` groups of `group_d` channels (one channel per thread in each group),
  each with its own (N, group_d) state tile; the groups share the B_t/C_t loads of a step.
  """
  refs = list(refs)
  u_ref, delta_ref, a_ref, b_ref, c_ref = refs[:5]
  refs = refs[5:]
  skip_ref = refs.pop(0) if spec.has_skip else None
  z_ref = refs.pop(0) if spec.has_gate else None
  bias_ref = refs.pop(0) if spec.has_bias else None
  y_ref = refs.pop(0)
  states_out_ref = refs.pop(0) if spec.store_states else None

  f32 = jnp.float32
  gd, n_pad = spec.group_d, spec.n_pad
  groups = range(spec.n_groups)
  layout = program_layout(spec)
  row, channels, states = layout.row, layout.channels, layout.states
  channel_ok, state_ok = layout.channel_ok, layout.state_ok
  tile_ok = layout.tile_ok(spec) if spec.store_states else None
  load = masked_load

  def load_group(ref, g, *index):  # (group_d,) row of group g
    index = tuple(index(i) for i in index)
    return load(ref.at[(*index, channels[g])], channel_ok[g])

  def load_states(ref, t):  # (N,) row of B or C at time t
    return load(ref.at[row, index(t), states], state_ok)

  a_log2 = [tile_from_rows([load_group(a_ref, g, n) for n in range(spec.n_state)], n_pad)
            for g in groups]
  skip = [load_group(skip_ref, g).astype(f32) if spec.has_skip else None for g in groups]
  bias = [load_group(bias_ref, g).astype(f32) if spec.has_bias else None for g in groups]

  def time_of(k):  # processing order k -> time index (backwards for reverse)
    return spec.length - 1 - k if spec.reverse else k

  def clamped_time(k):
    """Time of processing index k; a traced k is clamped into the sequence: only a prefetch
    past the last chunk reaches beyond it, and that data is never used."""
    if not isinstance(k, int):
      k = jnp.minimum(k, spec.length - 1)
    return time_of(k)

  def load_activations(k0, count):
    """u, delta, z rows of `count` steps from processing index k0, in the input dtype (bf16
    stays packed in registers until used). These stream from HBM: the ones worth prefetching."""
    rows = []
    for i in range(count):
      t = clamped_time(k0 + i)
      rows.append(dict(
          u=[load_group(u_ref, g, row, t) for g in groups],
          delta=[load_group(delta_ref, g, row, t) for g in groups],
          z=[load_group(z_ref, g, row, t) if spec.has_gate else None for g in groups]))
    return rows

  def load_state_rows(k0, count):
    """B_t, C_t rows of `count` steps; every channel block of the batch row reads them, so
    they come from L2 and are loaded at the start of their chunk, not prefetched."""
    return [dict(b=load_states(b_ref, clamped_time(k0 + i)),
                 c=load_states(c_ref, clamped_time(k0 + i))) for i in range(count)]

  def group_step(h, g, x):
    """One time step of group g: new (N, group_d) state and the (group_d,) output row."""
    u = x['u'][g].astype(f32)
    dt = x['delta'][g].astype(f32)
    if bias[g] is not None:
      dt = dt + bias[g]
    if spec.delta_softplus:
      dt = softplus(dt)
    decay = jnp.exp2(dt[None, :] * a_log2[g])
    h = decay * h + x['b'].astype(f32)[:, None] * (dt * u)[None, :]
    y = jnp.sum(h * x['c'].astype(f32)[:, None], axis=0)
    if skip[g] is not None:
      y = y + skip[g] * u
    if spec.has_gate:
      z = x['z'][g].astype(f32)
      y = y * (z * jax.nn.sigmoid(z))
    return h, y

  def run_chunk(hs, k0, activations):
    """The recurrence over one chunk whose first step is processing index k0."""
    state_rows = load_state_rows(k0, len(activations))
    hs = list(hs)
    for i, (x, bc) in enumerate(zip(activations, state_rows)):
      x = dict(x, **bc)
      t = index(time_of(k0 + i))
      for g in groups:
        hs[g], y = group_step(hs[g], g, x)
        plgpu.store(y_ref.at[row, t, channels[g]], y.astype(y_ref.dtype), mask=channel_ok[g])
        if spec.store_states:
          plgpu.store(states_out_ref.at[row, t, states, channels[g]], hs[g], mask=tile_ok[g])
    return tuple(hs)

  ct = spec.chunk_t
  hs = tuple(jnp.zeros((n_pad, gd), f32) for _ in groups)
  n_chunks, tail = divmod(spec.length, ct)
  if n_chunks and spec.prefetch:
    # Register double-buffering: chunk c + 1's activations load before chunk c is computed.
    def body(c, carry):
      hs, activations = carry
      next_activations = load_activations((c + 1) * ct, ct)
      return run_chunk(hs, c * ct, activations), next_activations

    hs, _ = jax.lax.fori_loop(0, n_chunks, body, (hs, load_activations(0, ct)))
  elif n_chunks:
    hs = jax.lax.fori_loop(0, n_chunks,
                           lambda c, hs: run_chunk(hs, c * ct, load_activations(c * ct, ct)), hs)
  if tail:
    run_chunk(hs, n_chunks * ct, load_activations(n_chunks * ct, tail))


def kernel_spec(u, A, D, z, delta_bias, *, delta_softplus: bool, reverse: bool,
                block_config: SelectiveScanBlockConfig, store_states: bool = False) -> KernelSpec:
  """The static facts of one call, shared by the forward and the backward kernel."""
  _, length, channels = u.shape
  n_state = A.shape[1]
  return KernelSpec(length=length, channels=channels, n_state=n_state,
                     n_pad=pl.next_power_of_2(n_state), block_d=block_config.block_d,
                     group_d=block_config.group_d, chunk_t=block_config.chunk_t,
                     prefetch=block_config.num_stages >= 2, reverse=reverse,
                     delta_softplus=delta_softplus, has_skip=D is not None,
                     has_gate=z is not None, has_bias=delta_bias is not None,
                     store_states=store_states)


def kernel_a_b_c(A, B, C):
  """A^T log2(e) as (N, D), so the kernels need exp2 only, and B, C in fp32: each thread
  converts all N of them every step otherwise (~20% of the loop's instructions at one channel
  per thread); in a model XLA fuses these casts into their producers."""
  return (A.astype(jnp.float32) * LOG2E).T, B.astype(jnp.float32), C.astype(jnp.float32)
