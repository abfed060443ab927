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
  mean_with: bool = False     # store the mean with another direction's output (token order)
  segment_length: int = 0     # steps one program walks (0: all L); grid axis 2 = segment
  segment_ends: bool = False  # write each segment's end state and Δ sum instead of y

  @property
  def walk_length(self) -> int:
    """Processing steps of one program."""
    return self.segment_length or self.length

  @property
  def initial_states(self) -> bool:
    """Whether each segment starts from a given state (the second walk of a split scan)."""
    return bool(self.segment_length) and not self.segment_ends

  @property
  def n_segments(self) -> int:
    return -(-self.length // self.walk_length)

  @property
  def mask_time(self) -> bool:
    """Whether the last segment runs past the sequence (those steps are masked)."""
    return self.n_segments * self.walk_length != self.length

  @property
  def n_groups(self) -> int:
    return self.block_d // self.group_d

  @property
  def mask_channels(self) -> bool:
    return self.channels % self.block_d != 0

  @property
  def mask_states(self) -> bool:
    return self.n_pad != self.n_state

  def time_of(self, k):
    """Processing index k -> time index (backwards for a reverse scan)."""
    return self.length - 1 - k if self.reverse else k


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

  def group_view(self, ref, g, *leading):
    """The (group_d,) view of group g's channels at the leading indices."""
    return ref.at[(*(index(i) for i in leading), self.channels[g])]

  def load_group(self, ref, g, *leading):
    return masked_load(self.group_view(ref, g, *leading), self.channel_ok[g])

  def load_parameters(self, spec, a_ref, skip_ref, bias_ref):
    """Per group: A's (n_pad, group_d) tile, and the D skip and Δ bias rows in fp32 (None where
    the call has none); both kernels hold them for the whole walk."""
    groups = range(spec.n_groups)
    a_tiles = [tile_from_rows([self.load_group(a_ref, g, n) for n in range(spec.n_state)],
                              spec.n_pad) for g in groups]
    skip = [self.load_group(skip_ref, g).astype(jnp.float32) if spec.has_skip else None
            for g in groups]
    bias = [self.load_group(bias_ref, g).astype(jnp.float32) if spec.has_bias else None
            for g in groups]
    return a_tiles, skip, bias


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


def and_masks(mask, valid, shape):
  """A store mask (or None) restricted to a scalar `valid` (or None: no restriction)."""
  if valid is None:
    return mask
  valid = jnp.broadcast_to(valid, shape)
  return valid if mask is None else mask & valid


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


def kernel_spec(u, A, D, z, delta_bias, *, delta_softplus: bool, reverse: bool,
                block_config: SelectiveScanBlockConfig, store_states: bool = False,
                mean_with: bool = False) -> KernelSpec:
  """The static facts of one call, shared by the forward and the backward kernel (which passes
  time_segments=1: it walks the whole sequence)."""
  _, length, channels = u.shape
  n_state = A.shape[1]
  segments = block_config.time_segments
  segment_length = -(-length // segments) if segments > 1 else 0
  return KernelSpec(length=length, channels=channels, n_state=n_state,
                     n_pad=pl.next_power_of_2(n_state), block_d=block_config.block_d,
                     group_d=block_config.group_d, chunk_t=block_config.chunk_t,
                     prefetch=block_config.num_stages >= 2, reverse=reverse,
                     delta_softplus=delta_softplus, has_skip=D is not None,
                     has_gate=z is not None, has_bias=delta_bias is not None,
                     store_states=store_states, mean_with=mean_with,
                     segment_length=segment_length)


def kernel_a_b_c(A, B, C):
  """A^T log2(e) as (N, D), so the kernels need exp2 only, and B, C in fp32: each thread
  converts all N of them every step otherwise (~20% of the loop's instructions at one channel
  per thread); in a model XLA fuses these casts into their producers."""
  return (A.astype(jnp.float32) * LOG2E).T, B.astype(jnp.float32), C.astype(jnp.float32)
