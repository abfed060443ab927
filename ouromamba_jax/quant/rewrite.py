"""The pass: FP params + plan (site -> spec) + activation statistics -> quantized params.

Quantization is a param rewrite: a Linear `kernel` becomes a `FakeQuantWeight` (calibration)
or `QuantizedWeight` (final), and `ActQuantizer`s are inserted at `input_quantizer` /
`<tensor>_quantizer` sites, which the model picks up without code changes.

Activation statistics come from `capture`: the same model run with `Recorder`s at the sites,
each returning its input unchanged and handing it back to the caller (works under jit: the
recorded values are outputs of the traced function).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import struct
from flax.core import frozen_dict

from ouromamba_jax.quant import qtypes
from ouromamba_jax.quant import weights as w_lib
from ouromamba_jax.quant.config import ActSpec, WeightSpec
from ouromamba_jax.quant.rules import Site


# ----------------------------------------------------------------------------------------------
# Paths in nested dicts.

def as_dict(tree):
  return frozen_dict.unfreeze(tree) if isinstance(tree, frozen_dict.FrozenDict) else tree


def get_path(tree, path: str):
  node = tree
  for key in path.split('/'):
    if not isinstance(node, Mapping) or key not in node:
      raise KeyError(f'{path!r} is not in the param tree (missing {key!r}).')
    node = node[key]
  return node


def set_path(tree, path: str, value):
  """A copy of `tree` with `value` at `path` (dicts on the way are copied, leaves shared)."""
  keys = path.split('/')
  root = dict(as_dict(tree))
  node = root
  for key in keys[:-1]:
    child = node.get(key, {})
    if not isinstance(child, Mapping):
      raise KeyError(f'cannot set {path!r}: {key!r} is a leaf.')
    node[key] = dict(child)
    node = node[key]
  node[keys[-1]] = value
  return root


def relative(path: str, prefix: str) -> str:
  if not path.startswith(prefix + '/'):
    raise ValueError(f'{path!r} is not under {prefix!r}')
  return path[len(prefix) + 1:]


def quantized_leaves(tree, prefix: str = '') -> dict[str, Any]:
  """path -> quantized object, for every quant type in the tree."""
  found = {}
  for key, value in as_dict(tree).items():
    path = f'{prefix}/{key}' if prefix else key
    if qtypes.is_qtype(value):
      found[path] = value
    elif isinstance(value, Mapping):
      found.update(quantized_leaves(value, path))
  return found


def map_qtypes(fn: Callable[[Any], Any], tree):
  """Applies fn to every quantized object of a nested-dict tree."""
  out = {}
  for key, value in as_dict(tree).items():
    if qtypes.is_qtype(value):
      out[key] = fn(value)
    elif isinstance(value, Mapping):
      out[key] = map_qtypes(fn, value)
    else:
      out[key] = value
  return out


def set_mode(qparams, mode: str):
  """All quantized leaves in mode 'fake' | 'int'; calibration weights become integer codes."""
  return map_qtypes(lambda q: qtypes.with_mode(q, mode), qparams)


# ----------------------------------------------------------------------------------------------
# Capturing site inputs.

_SINKS: list[dict[str, Any]] = []


@struct.dataclass
class Recorder:
  """Stands where a quantizer would; records what the site receives and passes it through."""
  path: str = struct.field(pytree_node=False)

  def __call__(self, x, implementation=None):  # pylint: disable=unused-argument
    if not _SINKS:
      raise RuntimeError('a Recorder was called outside `capture`; remove it from the params.')
    _SINKS[-1][self.path] = x
    return x


@contextlib.contextmanager
def _sink():
  sink = {}
  _SINKS.append(sink)
  try:
    yield sink
  finally:
    _SINKS.pop()


def capture(apply_fn: Callable[..., Any], params, paths: Iterable[str], *args):
  """Runs `apply_fn(params_with_recorders, *args)`; returns (its output, {path: site input}).

  `paths` are activation sites (…/input_quantizer, …/<tensor>_quantizer) relative to `params`.
  """
  paths = list(paths)
  tree = params
  for path in paths:
    tree = set_path(tree, path, Recorder(path))
  with _sink() as sink:
    out = apply_fn(tree, *args)
  missing = [p for p in paths if p not in sink]
  if missing:
    raise ValueError(f'these sites were never reached by the model, so they cannot be '
                     f'quantized: {missing}. Check the rules against the model.')
  return out, dict(sink)


# ----------------------------------------------------------------------------------------------
# Initial quantizers.

def smoothing_factors(act_max, weight, alpha: float):
  """SmoothQuant/PTQ4VM: s_c = clamp(act_max_c, 1e-3)^a / clamp(max_o |W[c, o]|, 1e-5)^(1-a)."""
  w_max = jnp.max(jnp.abs(weight.astype(jnp.float32)), axis=1)
  s = jnp.maximum(act_max, 1e-3) ** alpha / jnp.maximum(w_max, 1e-5) ** (1 - alpha)
  return jnp.maximum(s, w_lib.MIN_SMOOTH)


def init_weight(weight, spec: WeightSpec, smooth=None) -> qtypes.FakeQuantWeight:
  w = weight.astype(jnp.float32)
  scaled = w if smooth is None else w * smooth[:, None]
  return qtypes.FakeQuantWeight(w, w_lib.init_weight_scale(scaled, spec), smooth, spec.bits)


def init_stacked_weight(weight, spec: WeightSpec, smooth=None) -> qtypes.FakeQuantWeight:
  """A stacked torch-layout weight (K, out, in) -> one kernel (K, in, out) per direction."""
  return jax.vmap(lambda w, s: init_weight(w, spec, s))(jnp.swapaxes(weight, 1, 2), smooth)


def init_activation(x, spec: ActSpec, layout: str, smooth=None) -> qtypes.ActQuantizer:
  if smooth is not None:
    x = x / (smooth[None, :, None, :] if layout == qtypes.STACKED else smooth)
  return qtypes.ActQuantizer.calibrate(x, spec, layout)


def rewrite(params, plan: Mapping[str, Any], sites: Iterable[Site],
            stats: Mapping[str, Any], smooth: Optional[Mapping[str, Any]] = None):
  """Initial quantized tree for the planned sites.

  plan: site path -> spec (paths relative to `params`); stats: activation-site path ->
  captured calibration inputs; smooth: Linear path -> smoothing vector (PTQ4VM).
  """
  smooth = smooth or {}
  tree = params
  for site in sites:
    spec = plan.get(site.path)
    if spec is None:
      continue
    if site.kind == 'weight':
      init = init_stacked_weight if site.layout == qtypes.STACKED else init_weight
      obj = init(get_path(params, site.path), spec, smooth.get(site.linear))
    else:
      if site.path not in stats:
        raise ValueError(f'no calibration activations for {site.path}; capture them first.')
      obj = init_activation(stats[site.path], spec, site.layout, smooth.get(site.linear))
    tree = set_path(tree, site.path, obj)
  return tree


def tree_bytes(tree) -> int:
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))
