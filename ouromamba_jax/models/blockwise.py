"""One block of the Vim forward at a time: embed, block i, classify, each jitted once.

Why: calibration reconstructs block by block and the reports compare FP and quantized streams
per block, so they need the model cut at block boundaries. The pieces are the model's own:
`VisionMamba.embed`, the Block that its scanned forward applies (`VisionMamba.block`), and
`VisionMamba.classify`; the blocks of a model share one structure, so one compiled block serves
all of them. The whole forward is `model.apply` (its blocks under one scan).
"""
from __future__ import annotations

import functools
from typing import Any, Iterator

import jax
import jax.numpy as jnp

from ouromamba_jax.models import vim


@functools.lru_cache(maxsize=None)
def block_module(model: vim.VisionMamba) -> vim.Block:
  """The model's Block (cached per model config, so jitted functions keyed on it are reused)."""
  return model.block()


@functools.partial(jax.jit, static_argnums=0)
def run_block(block: vim.Block, layer, hidden, residual):
  """(mixer output, residual) of one block with the given (float or quantized) params."""
  return block.apply({'params': layer}, hidden, residual)


@functools.partial(jax.jit, static_argnums=0)
def embed(model: vim.VisionMamba, params, images):
  """(first block's input (B, L, d_model), residual zeros (B, L, d_model) fp32), as in
  `model.apply`."""
  hidden = model.apply({'params': params}, images, method=vim.VisionMamba.embed)
  return hidden, jnp.zeros(hidden.shape, jnp.float32)


def layers(model: vim.VisionMamba, params) -> Iterator[tuple[int, Any]]:
  """(index, params) of every block, in order."""
  for i in range(model.depth):
    yield i, params[f'layers_{i}']


def stages(model: vim.VisionMamba, trees, images):
  """Yields (prefix, module, method, subtrees, inputs) for each piece of the forward after the
  embedding: every block ('layers_i/', the shared Block, None = __call__), then the classifier
  ('', the model, VisionMamba.classify). `trees` are parameter trees (e.g. FP and quantized)
  run side by side: subtrees[j] and inputs[j] (its (hidden, residual)) belong to trees[j].
  Report code runs `module.apply({'params': subtree}, *inputs, method=method)` per piece and
  jits it once per (module, method), not once per model."""
  streams = [embed(model, tree, images) for tree in trees]
  block = block_module(model)
  for i, _ in layers(model, trees[0]):
    subtrees = [tree[f'layers_{i}'] for tree in trees]
    yield f'layers_{i}/', block, None, subtrees, streams
    streams = [run_block(block, sub, *stream) for sub, stream in zip(subtrees, streams)]
  yield '', model, vim.VisionMamba.classify, list(trees), streams
