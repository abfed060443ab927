"""Small layers whose parameters may be swapped for quantized ones.

The quantization pass rewrites the param tree: a `kernel` leaf may become a quantized
pytree, and quantizer states (e.g. `input_quantizer`) may appear beside it. Layers read
their params with `get_variable` (not `param`) outside init, so such a rewritten tree is
accepted as is, and dispatch on what they were given:

- a float kernel -> a plain dot;
- any other kernel object -> `kernel.linear(x, input_quantizer, dtype, implementation=...,
  bias=...)`
  (fake-quant or real-integer path, defined by `ouromamba_jax.quant`; `implementation` is the
  `quant_implementation` field: 'xla' | 'triton' | None, the kernels of the integer path);
- an activation-site quantizer -> `quantizer(x)`;
- a stacked (per-direction) projection, `stacked_linear`: the same, with a leading K axis.
"""
from __future__ import annotations

from typing import Any, Optional

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas.act_quant import api as act_quant_api
from kernels_pallas.act_quant import config as act_quant_config
from kernels_pallas.act_quant import producers


def module_by_module(model: nn.Module) -> nn.Module:
  """`model` with every Linear called as its own named submodule: blocks unscanned and a Vim
  mixer's two directions looped, not vmapped, and every Linear given an array (no producer).
  For tools that intercept module calls (the quant pass's site search, the layer reports): the
  vmapped directions call their projections as pure functions, so on a GPU (where small batches
  vmap) x_proj/dt_proj would go unseen."""
  fields = {f: False for f in ('scan_blocks', 'batch_directions', 'fuse_linear_inputs')
            if hasattr(model, f)}
  return model.clone(**fields) if fields else model


def read_param(module: nn.Module, name: str, init_fn, *init_args):
  """`self.param` at init; afterwards whatever the (possibly rewritten) tree holds."""
  if module.is_initializing():
    return module.param(name, init_fn, *init_args)
  value = module.get_variable('params', name)
  if value is None:
    raise KeyError(f'{"/".join(module.scope.path)}: parameter {name!r} is missing from the '
                   'params tree; was the checkpoint loaded with the right model config?')
  return value


def optional_param(module: nn.Module, name: str) -> Any:
  """A quantizer state stored beside the FP params, or None when the model is not quantized."""
  if module.is_initializing():
    return None
  return module.get_variable('params', name)


def apply_site(module: nn.Module, name: str, x):
  """Runs the activation quantizer stored under `name`, if the quant pass put one there (in
  int mode on the module's `quant_implementation` kernels)."""
  return quantize_site(optional_param(module, name), x,
                       getattr(module, 'quant_implementation', None))


def is_float_array(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating)


class Linear(nn.Module):
  """Dense layer with torch-like names (kernel (in, out), optional bias) and quant dispatch."""
  features: int
  use_bias: bool = False
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros
  quant_implementation: Optional[str] = None  # integer-mode kernels: 'xla' | 'triton' | None

  @nn.compact
  def __call__(self, x):
    kernel = read_param(self, 'kernel', self.kernel_init, (x.shape[-1], self.features))
    bias = read_param(self, 'bias', self.bias_init, (self.features,)) if self.use_bias else None
    return linear(x, kernel, bias, optional_param(self, 'input_quantizer'), self.dtype,
                  self.quant_implementation)


def linear(x, kernel, bias, input_quantizer, dtype, implementation: Optional[str] = None):
  """What `Linear` computes, as a function of its (possibly quantized) params, so that code
  which holds the params itself (a vmap over stacked layers) runs the same dispatch. x may be
  a producer (`act_quant.producers`): only an integer-mode kernel reads it as such."""
  if not is_float_array(kernel):  # the bias rides into the integer GEMM's epilogue
    return kernel.linear(x, input_quantizer, dtype, implementation=implementation, bias=bias)
  x = quantize_site(input_quantizer, producers.materialize(x), implementation)
  return with_bias(jnp.dot(x.astype(dtype), kernel.astype(dtype)), bias)


def with_bias(y, bias):
  """y + bias in y's dtype: a Linear's bias, added after its product (the integer GEMM's
  epilogue reproduces these bits, `kernels_pallas.mixed_gemm`)."""
  return y if bias is None else y + bias.astype(y.dtype)


def state_matrix(a_log):
  """A = -exp(A_log) in fp32: the A site's input in every model (and what
  `quant.fold.fold_parameter_sites` evaluates once for inference)."""
  return -jnp.exp(jnp.asarray(a_log).astype(jnp.float32))


def skip_vector(d):
  """D in fp32: the D site's input in every model (see `state_matrix`)."""
  return jnp.asarray(d).astype(jnp.float32)


def quantize_site(quantizer, x, implementation: Optional[str] = None):
  """An activation site's quantizer applied to x, or x where the site has none."""
  return x if quantizer is None else quantizer(x, implementation=implementation)


def stack_kind(tree):
  """What decides whether trees stack on a new leading axis: tree structure (static fields of
  quantized params included), leaf shapes and dtypes."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((jnp.shape(v), jnp.result_type(v)) for v in leaves)


def quantize_sites(quantizers, xs, implementation: Optional[str] = None) -> tuple:
  """Several sites' quantizers, each on its own x: integer-mode quantizers of one structure on
  inputs of one shape run as one vmapped call (Vim's B and C: one act_quant launch instead of
  two tiny, latency-bound ones); anything else (float, fake-quant, calibration recorders,
  differing quantizers) site by site. Same values either way."""
  if (len(xs) > 1 and all(getattr(q, 'mode', None) == 'int' for q in quantizers)
      and len(set(map(stack_kind, quantizers))) == 1 and len(set(map(stack_kind, xs))) == 1):
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *quantizers)
    out = jax.vmap(lambda q, x: q(x, implementation=implementation))(stacked, jnp.stack(xs))
    return tuple(out)
  return tuple(quantize_site(q, x, implementation) for q, x in zip(quantizers, xs))


def split_sites(x, widths, linear_params, quantizers, implementation: Optional[str] = None
                ) -> tuple:
  """x (B, L, sum of widths) cut along its channels into (the input of the Linear whose
  params are `linear_params` ({'kernel', 'input_quantizer', ...}; None at init), then each
  further part through its site quantizer, as `quantize_sites` gives it).

  With `act_quant.config.SEGMENTS_IN_ONE_LAUNCH` on and every part in integer mode, one
  act_quant launch quantizes them all (`act_quant_segments`: Vim's dt, B and C, whose serial
  window walks then overlap) and the first part comes as a `producers.Quantized`, its codes
  made for the Linear's quantizer; the same codes and values either way."""
  parts = jnp.split(x, np.cumsum(widths)[:-1].tolist(), axis=-1)
  sites = _segment_sites(x, widths, linear_params, quantizers)
  if sites is None:
    return (parts[0], *quantize_sites(quantizers, parts[1:], implementation))
  outs = act_quant_api.act_quant_segments(x, sites, implementation=implementation)
  return (producers.Quantized(parts[0], outs[0]), *outs[1:])


def _segment_sites(x, widths, linear_params, quantizers):
  """The `SegmentSite`s of `split_sites`' parts, or None where they do not share a launch."""
  if not act_quant_config.SEGMENTS_IN_ONE_LAUNCH or not linear_params:
    return None
  kernel, input_quantizer = linear_params.get('kernel'), linear_params.get('input_quantizer')
  if not hasattr(kernel, 'input_segment_site'):
    return None
  sites = [kernel.input_segment_site(input_quantizer, widths[0])]
  for quantizer, width in zip(quantizers, widths[1:]):
    sites.append(quantizer.segment_site(width, x.dtype)
                 if hasattr(quantizer, 'segment_site') else None)
  return None if any(site is None for site in sites) else tuple(sites)


def stacked_linear(module: nn.Module, name: str, weight, x, dtype):
  """K per-direction projections stored stacked in torch layout (`{name}_weight` (K, out, in),
  no bias; VMamba's x_proj/dt_projs), applied to x (B, K, L, in) -> (B, K, L, out).

  The quant pass may replace the weight by a quantized kernel whose leaves carry the K axis
  (it then runs `kernel.stacked_linear`) and put a stacked `{name}_input_quantizer` beside it.
  `weight` is what the caller read (`read_param`: its own init and official name).
  """
  input_quantizer = optional_param(module, f'{name}_input_quantizer')
  implementation = getattr(module, 'quant_implementation', None)
  if is_float_array(weight):
    x = quantize_site(input_quantizer, x, implementation)
    return jnp.einsum('bkli,koi->bklo', x.astype(dtype), weight.astype(dtype))
  return weight.stacked_linear(x, input_quantizer, dtype, implementation=implementation)


def merge_batch_stats(params, batch_stats, momentum: float):
  """params with each BatchNorm's running statistics moved towards the batch's (torch:
  running = (1 - momentum) * running + momentum * batch); `batch_stats` is the 'batch_stats'
  collection a batch-statistics forward stored (same paths as the params it updates)."""
  flat = dict(traverse_util.flatten_dict(params))
  for path, value in traverse_util.flatten_dict(batch_stats).items():
    flat[path] = (1 - momentum) * flat[path] + momentum * value.astype(flat[path].dtype)
  return traverse_util.unflatten_dict(flat)


class RMSNorm(nn.Module):
  """y = x * rsqrt(mean(x^2) + eps) * weight, computed in fp32 (hustvl `rms_norm_ref`).

  With `as_producer=dtype` it returns y cast to dtype unevaluated, as an
  `act_quant.producers.RMSNormed` of x and its per-token rsqrt (the same expression, so the
  same bits): an integer-mode Linear reading it forms y in its act_quant kernel, and y is
  never written; anything else materializes it."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x, as_producer=None):
    weight = read_param(self, 'weight', nn.initializers.ones, (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    inv_rms = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1) + self.eps)
    if as_producer is not None:
      return producers.RMSNormed(x32, inv_rms, weight, jnp.dtype(as_producer))
    return (x32 * inv_rms[..., None]) * weight.astype(jnp.float32)


def causal_depthwise_conv1d(x, kernel, bias):
  """x: (B, L, C); kernel: (K, C); y[t] = sum_k kernel[k] * x[t - K + 1 + k] + bias (zero left pad)."""
  k = kernel.shape[0]
  padded = jnp.pad(x, ((0, 0), (k - 1, 0), (0, 0)))
  length = x.shape[1]
  y = sum(padded[:, i:i + length, :] * kernel[i].astype(x.dtype) for i in range(k))
  return y + bias.astype(x.dtype)
