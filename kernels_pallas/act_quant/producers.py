"""Activations that act_quant reads from the operands they are made of (producer fusion).

A quantized Linear's input is often a cheap elementwise function of arrays that already sit in
memory. Written out first, it costs one more pass (read the operands, write x) and one more
launch before act_quant reads x again. Handed over as its operands instead, the act_quant
kernel forms each time step's row in registers, and x never reaches memory.

A producer is a pytree of its operands. It stands for the array `materialize()` computes: the
XLA form, which float code, the fake-quant simulation and the XLA implementation run. The
Triton kernel calls `kernel_fetch`, which reads one time step's operand tiles through the
kernel's loader (`tiles(ref, step)` of a (B, L, C) operand, `per_row(ref, step)` of a (B, L)
one, `per_channel(ref)` of a (C,) one), and a step later `kernel_form`, the same arithmetic on
those tiles (apart, so that a load's latency hides behind a whole step). Its rounding is done
on the bits (`rounded_to`), and no producer reduces in the kernel (a reduction's order is the
compiler's), so the kernel's codes equal those of act_quant on the materialized x bit for bit.

  DirectionMean  Vim's bidirectional mixer output before out_proj: the mean of the forward
                 scan's output and the backward scan's, the latter still in its own
                 (reversed) token order, so the flip is an index in the kernel, not a copy.
  RMSNormed      a block's normalized input before in_proj: the residual stream (fp32) times
                 its per-token 1/rms (computed by XLA, where the residual is made) times the
                 norm's weight, cast; the normalized copy is never written.

`Quantized` is the other way round: an input whose codes a neighbour's launch already made
(`api.act_quant_segments`), which a Linear's integer kernels take as they are.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from kernels_pallas.rounding import rounded_to


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DirectionMean:
  """x = ((forward + backward flipped in time) / 2).astype(dtype), both (B, L, C), the sum in
  fp32 (hustvl's `if_divide_out` v2 output); `backward` is in its scan order: its token t is
  x's token L - 1 - t."""
  forward: Any
  backward: Any
  dtype: Any = dataclasses.field(metadata=dict(static=True))

  def __post_init__(self):
    if _is_array(self.forward):
      _check_operands(self.forward, self.backward)

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.forward.shape)

  ndim = property(lambda self: len(self.shape))

  def materialize(self):
    """The XLA form: the array this producer stands for."""
    total = self.forward.astype(jnp.float32) + jnp.flip(self.backward, axis=1).astype(jnp.float32)
    return (total / 2).astype(self.dtype)

  def kernel_fetch(self, load, t, length: int):
    """Step t's operand tiles as loaded, through the kernel's loader `load` (module docstring;
    masked lanes 0); the fields hold refs here."""
    return load.tiles(self.forward, t), load.tiles(self.backward, length - 1 - t)

  def kernel_form(self, fetched):
    """The row as fp32 tiles from `kernel_fetch`'s loads."""
    forward, backward = fetched
    return tuple(rounded_to((f.astype(jnp.float32) + b.astype(jnp.float32)) * 0.5, self.dtype)
                 for f, b in zip(forward, backward))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RMSNormed:
  """x = ((residual * inv_rms[..., None]) * weight).astype(dtype), in fp32: hustvl's RMSNorm of
  the residual stream with its reduction already done, `inv_rms` = rsqrt(mean(residual^2) +
  eps) per token (`models.layers.RMSNorm` computes the very same expression, so the bits
  agree). residual (B, L, C) float, inv_rms (B, L) fp32, weight (C,) float.

  Why the reduction stays outside: XLA makes it where it makes the residual, and the kernel
  then only multiplies, so its codes are those of the materialized x bit for bit on every
  backend; a reduction inside the kernel would sum in another order than XLA's."""
  residual: Any
  inv_rms: Any
  weight: Any
  dtype: Any = dataclasses.field(metadata=dict(static=True))

  def __post_init__(self):
    if _is_array(self.residual):
      _check_norm_operands(self.residual, self.inv_rms, self.weight)

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.residual.shape)

  ndim = property(lambda self: len(self.shape))

  def materialize(self):
    """The XLA form: the array this producer stands for."""
    x = self.residual.astype(jnp.float32) * self.inv_rms[..., None]
    return (x * self.weight.astype(jnp.float32)).astype(self.dtype)

  def kernel_fetch(self, load, t, length: int):
    """Step t's operands as loaded (see `DirectionMean.kernel_fetch`)."""
    del length
    return load.tiles(self.residual, t), load.per_row(self.inv_rms, t), load.per_channel(
        self.weight)

  def kernel_form(self, fetched):
    """The row as fp32 tiles from `kernel_fetch`'s loads."""
    residual, inv_rms, weight = fetched
    inv_rms = inv_rms.astype(jnp.float32)
    return tuple(rounded_to((r.astype(jnp.float32) * inv_rms) * w.astype(jnp.float32),
                            self.dtype)
                 for r, w in zip(residual, weight))


PRODUCERS = (DirectionMean, RMSNormed)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Quantized:
  """A Linear's input x (`value`) with its codes already made for that Linear's own input
  quantizer (`activation`, an `IntActivation`): Vim's dt, quantized in the launch that also
  quantizes B and C. The integer Linear reads the codes; anything else reads `value`."""
  value: Any
  activation: Any

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.value.shape)

  @property
  def ndim(self) -> int:
    return self.value.ndim

  @property
  def dtype(self):
    return self.value.dtype

  def materialize(self):
    return self.value


def _is_array(operand) -> bool:
  """Whether a field holds an array (or a tracer or shape struct) to check, not a kernel ref."""
  return isinstance(operand, jax.Array) or hasattr(operand, 'aval')


def _check_operands(forward, backward) -> None:
  if forward.ndim != 3 or forward.shape != backward.shape:
    raise ValueError('DirectionMean: forward and backward must be (B, L, C) arrays of one shape, '
                     f'got {forward.shape} and {backward.shape}.')
  for name, value in (('forward', forward), ('backward', backward)):
    if not jnp.issubdtype(value.dtype, jnp.floating):
      raise ValueError(f'DirectionMean: {name} must be a float array, got {value.dtype}.')


def _check_norm_operands(residual, inv_rms, weight) -> None:
  if residual.ndim != 3:
    raise ValueError(f'RMSNormed: residual must be a (B, L, C) array, got shape {residual.shape}.')
  if inv_rms.shape != residual.shape[:2]:
    raise ValueError(f'RMSNormed: inv_rms must have shape {residual.shape[:2]} (one value per '
                     f'token of the residual {residual.shape}), got {inv_rms.shape}.')
  if weight.shape != residual.shape[2:]:
    raise ValueError(f'RMSNormed: weight must have shape {residual.shape[2:]} (one per channel), '
                     f'got {weight.shape}.')
  for name, value in (('residual', residual), ('inv_rms', inv_rms), ('weight', weight)):
    if not jnp.issubdtype(value.dtype, jnp.floating):
      raise ValueError(f'RMSNormed: {name} must be a float array, got {value.dtype}.')


def is_produced(x) -> bool:
  """Whether x is a producer (not an array)."""
  return isinstance(x, PRODUCERS)


def materialize(x):
  """x itself for an array, the array a producer (or a `Quantized`) stands for otherwise."""
  return x.materialize() if isinstance(x, (*PRODUCERS, Quantized)) else x
