"""Inputs and outputs of every Linear of a model run (float or quantized params)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from ouromamba_jax.models import blockwise
from ouromamba_jax.models import layers


def module_linear_io(module: nn.Module, params, *args, method=None
                     ) -> dict[str, tuple[jax.Array, jax.Array]]:
  """{Linear path relative to `module`: (input, output)} of `module.apply` (traceable: use
  under jit). `method` None is `__call__`."""
  found = {}

  def interceptor(next_fun, args_, kwargs, context):
    out = next_fun(*args_, **kwargs)
    if isinstance(context.module, layers.Linear) and context.method_name == '__call__':
      found['/'.join(context.module.scope.path)] = (args_[0], out)
    return out

  with nn.intercept_methods(interceptor):
    module.apply({'params': params}, *args, method=method)
  return found


def per_piece(model, trees, images, paths, piece_fn) -> dict[str, Any]:
  """{path: value} for Linear `paths`, computed piece by piece of the block-by-block forward
  (`blockwise.stages`, so one block compiles): for each piece holding some of the paths,
  `piece_fn(module, method, relative_paths, *subtrees, *inputs)` returns {relative path: value}.
  `trees` (e.g. FP and quantized) run side by side."""
  out = {}
  pieces = blockwise.stages(layers.module_by_module(model), trees, images)
  for prefix, module, method, subtrees, inputs in pieces:
    own = tuple(p[len(prefix):] for p in paths if p.startswith(prefix)
                and (prefix or not p.startswith('layers_')))
    if own:
      values = piece_fn(module, method, own, *subtrees, *inputs)
      out.update({prefix + p: v for p, v in values.items()})
  return out
