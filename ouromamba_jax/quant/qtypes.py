"""Pytree types the quantization pass puts into the param tree.

- `ActQuantizer`: an activation site (Linear input, Δ, B, C, A, D); called as `q(x)`.
- `FakeQuantWeight`: a Linear kernel during calibration (float weight + learnable step).
- `QuantizedWeight`: the final kernel (integer codes, int4 packed two per byte, + steps).
- `FoldedSite`: an inference-only stand-in for a site whose input is a parameter (A, D): its
  quantized value, computed once (`quant.fold`), so no forward recomputes it.

Weights expose `.linear(x, input_quantizer, dtype, implementation=None, bias=None)` for
`models.layers.Linear` (the bias added in `dtype` after the product, fused into the integer
GEMM's epilogue where that kernel runs). A `QuantizedWeight` in mode 'int' runs the Pallas
kernels' public APIs (`quant.int_linear`: act_quant + mixed_gemm, `implementation` 'xla' |
'triton'); the Linears they do not cover (asymmetric inputs, > 8 bits) and mode 'fake' use
`quantized_linear`, which computes the product the way an integer kernel does it:

  y = (dot(q_in - z, W_q) * S_I[t] + dot(q_out - z_o, W_q) * S_o[b, t]) * s_w[o]

with integer codes q and W_q. mode 'int' runs the dots on int8 (int32 accumulation); mode
'fake' runs them on the same codes held in float32 (STE-rounded, so every step size gets a
gradient). Sums of integers below 2^24 are exact in float32, so both modes agree bit for bit
(W8A8 with very wide inputs could in principle exceed that; W4 never does for Vim sizes).
Float outliers (O16) go through a float dot in both modes.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import struct

from kernels_pallas.act_quant import api as act_quant_api
from kernels_pallas.act_quant import producers
from kernels_pallas.act_quant.config import MIN_SCALE
from kernels_pallas.act_quant.reference import int_dtype
from ouromamba_jax.models import layers
from ouromamba_jax.quant import activations as act_lib
from ouromamba_jax.quant import int_linear
from ouromamba_jax.quant import weights as w_lib
from ouromamba_jax.quant.config import ActSpec, MODES

# Layout of a per-direction site stored stacked (VMamba): leaves carry a leading K axis and the
# activations are (B, K, L, C), each direction with its own per-step scales.
STACKED = 'stacked'


def check_mode(mode):
  if mode not in MODES:
    raise ValueError(f"quantized param mode must be one of {MODES}, got {mode!r}.")


def _float_dot(a, w):
  return jnp.einsum('...i,io->...o', a, w, precision=jax.lax.Precision.HIGHEST,
                    preferred_element_type=jnp.float32)


def _int_dot(a, w):
  """Integer dot with int32 accumulation; returns float32 (exact below 2^24)."""
  small = lambda v: v.dtype == jnp.int8
  if not (small(a) and small(w)):
    a, w = a.astype(jnp.int32), w.astype(jnp.int32)
  acc = jax.lax.dot_general(a, w, (((a.ndim - 1,), (0,)), ((), ())),
                            preferred_element_type=jnp.int32)
  return acc.astype(jnp.float32)


def _codes_for_int_dot(q, zero_point, qmin, qmax, zp_expand):
  """Integer operand q - z as int8 when it fits, else int32."""
  if zero_point is None:
    return q.astype(int_dtype(qmin, qmax))
  return q.astype(jnp.int32) - zp_expand(zero_point.astype(jnp.int32))


def quantized_linear(x, w_codes, w_scale, input_quantizer, smooth, mode: str, dtype):
  """x (..., in) times a per-channel quantized kernel (codes (in, out), steps (out,))."""
  check_mode(mode)
  x = x.astype(jnp.float32)
  if smooth is not None:
    x = x / jnp.maximum(smooth, w_lib.MIN_SMOOTH)
  w_scale = jnp.maximum(w_scale.astype(jnp.float32), MIN_SCALE)
  if input_quantizer is None:
    y = _float_dot(x, w_codes.astype(jnp.float32))
    return (y * w_scale).astype(dtype)

  if input_quantizer.layout != 'steps':
    raise ValueError("a Linear input quantizer needs layout 'steps' ((B, L, C) or (B, C)).")
  x3, _ = act_lib.as_steps(x, 'steps')
  spec = input_quantizer.spec
  parts = input_quantizer.parts(x3, ste=(mode == 'fake'))
  if mode == 'int':
    w_int = w_codes
    inl = _codes_for_int_dot(parts.inlier_q, parts.inlier_zero_point, spec.qmin, spec.qmax,
                             lambda z: z[None, :, None])
    acc_in = _int_dot(inl, w_int)
  else:
    w_f = w_codes.astype(jnp.float32)
    inl = parts.inlier_q
    if parts.inlier_zero_point is not None:
      inl = inl - parts.inlier_zero_point[None, :, None]
    acc_in = _float_dot(inl, w_f)
  y = acc_in * parts.inlier_scale[None, :, None]
  if spec.outliers == 'int':
    if mode == 'int':
      out = _codes_for_int_dot(parts.outlier_q, parts.outlier_zero_point, spec.outlier_qmin,
                               spec.outlier_qmax, lambda z: z[..., None])
      acc_out = _int_dot(out, w_int)
    else:
      out = parts.outlier_q
      if parts.outlier_zero_point is not None:
        out = out - parts.outlier_zero_point[..., None]
      acc_out = _float_dot(out, w_f)
    y = y + acc_out * parts.outlier_scale[..., None]
  elif spec.outliers == 'float':
    y = y + _float_dot(parts.outlier_q, w_codes.astype(jnp.float32))
  return (y * w_scale).reshape(x.shape[:-1] + (w_scale.shape[0],)).astype(dtype)


@struct.dataclass
class ActQuantizer:
  """A calibrated activation site. `inlier_scale` (L,) is learnable; the zero point is fixed."""
  inlier_scale: jax.Array
  zero_point: Optional[jax.Array]
  spec: ActSpec = struct.field(pytree_node=False)
  layout: str = struct.field(pytree_node=False, default='steps')
  mode: str = struct.field(pytree_node=False, default='fake')

  @classmethod
  def calibrate(cls, x, spec: ActSpec, layout: str = 'steps'):
    """Static steps from calibration activations x ((N, L, C) or the site's own shape;
    layout 'stacked': (N, K, L, C), K directions each with its own per-step steps), in mode
    'fake' (calibration trains them; `with_mode` gives another)."""
    if layout == STACKED:
      per_k = jax.vmap(lambda xk: cls.calibrate(xk, spec, 'steps'), in_axes=1)(x)
      return per_k.replace(layout=STACKED)
    scale, zero_point = act_lib.calibrate_inlier_scale(to_grid_domain(x, spec), spec, layout)
    return cls(scale, zero_point, spec, layout)

  def parts(self, x3, *, ste: bool):
    """Codes of x3 (in the grid's domain: log(-x) for a log-domain spec)."""
    return act_lib.quantize_parts(to_grid_domain(x3, self.spec), self.inlier_scale, self.spec,
                                  self.zero_point, ste=ste)

  def __call__(self, x, implementation: Optional[str] = None):
    """Fake-quant (STE) or, in int mode, dequantized integer codes of x; `implementation`
    picks the int-mode act_quant kernel ('xla' | 'triton' | None: the platform default)."""
    if self.layout == STACKED:
      return jax.vmap(lambda q, xk: q(xk, implementation), in_axes=(0, 1), out_axes=1)(
          self.per_direction(), x)
    x3, restore = act_lib.as_steps(x, self.layout)
    if self.layout == 'tensor':
      # A per-tensor site (A, D) is one step holding every element: the act_quant kernel would
      # walk it in a single program; XLA's form (the same codes) fuses into its producer.
      implementation = 'xla'
    if self.mode == 'fake':
      y = act_lib.dequantize_activation(self.parts(x3, ste=True))
    elif self.spec.domain == 'log':
      y = act_lib.dequantize_activation(
          int_linear.quantize_site(to_grid_domain(x3, self.spec), self, implementation))
    else:  # codes and dequantize in one pass where the kernel runs (same values)
      return restore(int_linear.dequantized_site(x3, self, implementation, x.dtype))
    if self.spec.domain == 'log':
      y = -jnp.exp(y)
    return restore(y).astype(x.dtype)

  def segment_site(self, width: int, dequantize_to):
    """This int-mode site as a segment of a shared act_quant launch (`act_quant_segments`),
    its values dequantized to `dequantize_to`; None where its call does more than act_quant
    (fake mode, the log domain, a per-tensor site)."""
    if self.mode != 'int' or self.layout != 'steps' or self.spec.domain == 'log':
      return None
    return act_quant_api.SegmentSite(width, self.inlier_scale, self.spec.kernel_params,
                                     self.zero_point, dequantize_to)

  def per_direction(self) -> 'ActQuantizer':
    """A stacked quantizer as the per-step one that `jax.vmap` maps over its K axis."""
    return self.replace(layout='steps')


def stacked_linear(weight, x, input_quantizer, dtype, implementation):
  """K per-direction Linears: weight leaves (K, ...), x (B, K, L, in), a stacked (or no)
  input quantizer; each direction runs `weight.linear` (fake or int) on its own slice."""
  q = input_quantizer and input_quantizer.per_direction()
  return jax.vmap(lambda w, xk, qk: w.linear(xk, qk, dtype, implementation),
                  in_axes=(0, 1, 0), out_axes=1)(weight, x, q)


def to_grid_domain(x, spec: ActSpec):
  """x itself, or log(-x) for a log-domain spec (A = -exp(A_log) < 0; clamped at -1e-30)."""
  if spec.domain != 'log':
    return x
  return jnp.log(jnp.maximum(-jnp.asarray(x, jnp.float32), 1e-30))


@struct.dataclass
class FoldedSite:
  """A parameter-only site (A = -exp(A_log), D) already quantized: `value` is what its
  quantizer returns for the parameter, so a forward reads it instead of quantizing the same
  tensor again on every call (on a GPU, several small XLA kernels per site and block). The
  site's input is still computed by the model and discarded, which XLA removes as dead code.
  Inference only: it holds no learnable step."""
  value: jax.Array
  mode: str = struct.field(pytree_node=False, default='int')

  def __call__(self, x, implementation: Optional[str] = None):
    del implementation
    if jnp.shape(x) != self.value.shape:
      raise ValueError(f'a folded site holds a {self.value.shape} value but was called on '
                       f'{jnp.shape(x)}: fold the quantized tree of this model again '
                       '(quant.fold_parameter_sites).')
    return self.value.astype(jnp.result_type(x))


@struct.dataclass
class FakeQuantWeight:
  """Calibration form of a kernel (in, out): float weight, learnable step (out,) and, for the
  PTQ4VM baseline, a learnable smoothing vector (in,) (x / s, W * s)."""
  weight: jax.Array
  scale: jax.Array
  smooth: Optional[jax.Array] = None
  bits: int = struct.field(pytree_node=False, default=4)

  def smoothed_weight(self):
    if self.smooth is None:
      return self.weight.astype(jnp.float32)
    return self.weight.astype(jnp.float32) * jnp.maximum(self.smooth, w_lib.MIN_SMOOTH)[:, None]

  def linear(self, x, input_quantizer, dtype, implementation: Optional[str] = None, bias=None):
    del implementation  # the calibration form always runs the float simulation
    codes = w_lib.weight_codes(self.smoothed_weight(), self.scale, self.bits, ste=True)
    y = quantized_linear(producers.materialize(x), codes, self.scale, input_quantizer,
                         self.smooth, 'fake', dtype)
    return layers.with_bias(y, bias)

  def stacked_linear(self, x, input_quantizer, dtype, implementation: Optional[str] = None):
    return stacked_linear(self, x, input_quantizer, dtype, implementation)

  def freeze(self, mode: str = 'fake') -> 'QuantizedWeight':
    """Integer codes stored K-major (int4 packed when bits <= 4); a stacked kernel (K, in, out)
    per direction.
    One jitted program per weight shape (op by op, every step of it compiled on its own for
    every new shape)."""
    return _freeze(self, mode)

  def _freeze(self, mode: str) -> 'QuantizedWeight':
    if self.weight.ndim == 3:
      return jax.vmap(lambda w: w._freeze(mode))(self)  # pylint: disable=protected-access
    codes = w_lib.quantize_weight_int(self.smoothed_weight(), self.scale, self.bits)
    packed = self.bits <= 4
    values = w_lib.to_kernel_layout(codes, packed)
    return QuantizedWeight(values, jnp.maximum(self.scale, MIN_SCALE), self.smooth,
                           self.bits, int(self.weight.shape[0]), packed, mode)


@struct.dataclass
class QuantizedWeight:
  """Final kernel: codes stored K-major, (out, in) int8 (int16 above 8 bits) or uint8 int4 packed
  in halves along `in` (out, ceil(in/2)) (`weights.to_kernel_layout`): the integer GEMM reads
  them as stored, with no per-call transpose. Per-output-channel steps (out,) already clamped to
  >= MIN_SCALE (by `freeze`: the integer kernels use them as stored), optional smoothing (in,)."""
  values: jax.Array
  scale: jax.Array
  smooth: Optional[jax.Array] = None
  bits: int = struct.field(pytree_node=False, default=4)
  in_features: int = struct.field(pytree_node=False, default=0)
  packed: bool = struct.field(pytree_node=False, default=False)
  mode: str = struct.field(pytree_node=False, default='fake')

  def codes(self):
    """Unpacked integer codes (in, out), as the XLA integer dots take them."""
    return w_lib.codes_from_kernel_layout(self.values, self.in_features, self.packed)

  def linear(self, x, input_quantizer, dtype, implementation: Optional[str] = None, bias=None):
    """Mode 'int' runs the integer kernels (act_quant + mixed_gemm, `quant.int_linear`) with
    `implementation` ('xla' | 'triton' | None: platform default) where they cover the Linear,
    else the XLA integer dots below; mode 'fake' the float simulation."""
    if self.mode == 'int':
      if int_linear.unsupported_reason(self, input_quantizer) is None:
        return int_linear.linear(self, x, input_quantizer, dtype, implementation, bias)
    y = quantized_linear(producers.materialize(x), self.codes(), self.scale, input_quantizer,
                         self.smooth, self.mode, dtype)
    return layers.with_bias(y, bias)

  def stacked_linear(self, x, input_quantizer, dtype, implementation: Optional[str] = None):
    return stacked_linear(self, x, input_quantizer, dtype, implementation)

  def input_segment_site(self, input_quantizer, width: int):
    """This Linear's input site as a segment of a shared act_quant launch, or None where the
    Linear would not read act_quant's codes as they are (`int_linear.input_segment`)."""
    if input_quantizer is None:
      return None
    return int_linear.input_segment(self, input_quantizer, width)


@functools.partial(jax.jit, static_argnums=1)
def _freeze(weight: FakeQuantWeight, mode: str) -> QuantizedWeight:
  return weight._freeze(mode)  # pylint: disable=protected-access


QTYPES = {cls.__name__: cls for cls in (ActQuantizer, FakeQuantWeight, QuantizedWeight)}


def is_qtype(x: Any) -> bool:
  return isinstance(x, tuple(QTYPES.values()))


def with_mode(x, mode: str):
  """The same object in another mode ('fake' | 'int'); weights still in calibration form are
  frozen to integer codes."""
  check_mode(mode)
  if isinstance(x, FakeQuantWeight):
    return x.freeze(mode)
  if isinstance(x, (ActQuantizer, QuantizedWeight)):
    return x.replace(mode=mode)
  return x
