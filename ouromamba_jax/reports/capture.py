"""Inputs and outputs of every Linear of a model run (float or quantized params)."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax

from ouromamba_jax.models import layers


def linear_io(model, params, images) -> dict[str, tuple[jax.Array, jax.Array]]:
  """{Linear path: (input, output)} of one forward pass (traceable: use under jit)."""
  found = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, layers.Linear) and context.method_name == '__call__':
      found['/'.join(context.module.scope.path)] = (args[0], out)
    return out

  with nn.intercept_methods(interceptor):
    model.apply({'params': params}, images)
  return found


@functools.partial(jax.jit, static_argnums=(0, 3))
def linear_io_jit(model, params, images, paths: tuple[str, ...]):
  """`linear_io` restricted to `paths` (keeps the jitted outputs small)."""
  found = linear_io(model, params, images)
  return {p: found[p] for p in paths}
