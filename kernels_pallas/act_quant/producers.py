"""Activations that act_quant reads from the operands they are made of (producer fusion).

A quantized Linear's input is often a cheap elementwise function of arrays that already sit in
memory. Written out first, it costs one more pass (read the operands, write x) and one more
launch before act_quant reads x again. Handed over as its operands instead, the act_quant
kernel forms each time step's row in registers, and x never reaches memory.

A producer is a pytree of its operands. It stands for the array `materialize()` computes: the
XLA form, which float code, the fake-quant simulation and the XLA implementation run. The
Triton kernel calls `kernel_rows`, the same arithmetic on one time step of row tiles. Its
rounding is done on the bits (`rounded_to`), so the kernel's codes equal those of act_quant on
the materialized x bit for bit.

  DirectionMean  Vim's bidirectional mixer output before out_proj: the mean of the forward
                 scan's output and the backward scan's, the latter still in its own
                 (reversed) token order, so the flip is an index in the kernel, not a copy.

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
    if isinstance(self.forward, jax.Array) or hasattr(self.forward, 'aval'):
      _check_operands(self.forward, self.backward)

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.forward.shape)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def materialize(self):
    """The XLA form: the array this producer stands for."""
    total = self.forward.astype(jnp.float32) + jnp.flip(self.backward, axis=1).astype(jnp.float32)
    return (total / 2).astype(self.dtype)

  def kernel_rows(self, load, t, length: int):
    """Step t's row as fp32 tiles, from `load(ref, step)` -> the ref's (rows, width) tiles at
    that step (masked lanes 0); the fields hold refs here."""
    forward, backward = load(self.forward, t), load(self.backward, length - 1 - t)
    return tuple(rounded_to((f.astype(jnp.float32) + b.astype(jnp.float32)) * 0.5, self.dtype)
                 for f, b in zip(forward, backward))


PRODUCERS = (DirectionMean,)


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


def _check_operands(forward, backward) -> None:
  if forward.ndim != 3 or forward.shape != backward.shape:
    raise ValueError('DirectionMean: forward and backward must be (B, L, C) arrays of one shape, '
                     f'got {forward.shape} and {backward.shape}.')
  for name, value in (('forward', forward), ('backward', backward)):
    if not jnp.issubdtype(value.dtype, jnp.floating):
      raise ValueError(f'DirectionMean: {name} must be a float array, got {value.dtype}.')


def is_produced(x) -> bool:
  """Whether x is a producer (not an array)."""
  return isinstance(x, PRODUCERS)


def materialize(x):
  """x itself for an array, the array a producer (or a `Quantized`) stands for otherwise."""
  return x.materialize() if isinstance(x, (*PRODUCERS, Quantized)) else x
