"""The Vim forward one piece at a time: embed, each Block, classify, each piece jitted once.

Why: jitted whole, a (quantized) Vim is one program with `depth` unrolled blocks, and compiling
it is most of the time of an evaluation or a layer report (about a minute per quantized tree on
a GPU host). The blocks of a model share one structure, so one compiled block serves all of
them, and calibration, reports and evaluation pay for one block's compilation. The ops are
those of `model.apply`; only fusion across block boundaries differs (logits agree to float
rounding). Whole-model `jax.jit(model.apply)` stays the inference path (bench/e2e_latency.py).
"""
from __future__ import annotations

import functools
from typing import Any, Iterator

import jax
import jax.numpy as jnp

from ouromamba_jax.models import vim


@functools.lru_cache(maxsize=None)
def block_module(model: vim.VisionMamba) -> vim.Block:
  """One Block per model config (cached, so jitted functions keyed on it are reused)."""
  return vim.Block(model.mixer_factory(), model.eps, model.dtype)


@functools.partial(jax.jit, static_argnums=0)
def run_block(block: vim.Block, layer, hidden, residual):
  """(mixer output, residual) of one block with the given (float or quantized) params."""
  return block.apply({'params': layer}, hidden, residual)


@functools.partial(jax.jit, static_argnums=0)
def embed(model: vim.VisionMamba, params, images):
  """(first block's input (B, L, d_model), residual zeros (B, L, d_model) fp32).

  The zero residual makes block 0 compute `0 + hidden`, i.e. exactly what `model.apply` does
  with its missing residual, so every block runs the same compiled program."""
  hidden = model.apply({'params': params}, images, method=vim.VisionMamba.embed)
  return hidden, jnp.zeros(hidden.shape, jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def classify(model: vim.VisionMamba, params, hidden, residual):
  return model.apply({'params': params}, hidden, residual, method=vim.VisionMamba.classify)


def layers(model: vim.VisionMamba, params) -> Iterator[tuple[int, Any]]:
  """(index, params) of every block, in order."""
  for i in range(model.depth):
    yield i, params[f'layers_{i}']


def forward(model: vim.VisionMamba, params, images):
  """Logits of `model.apply({'params': params}, images)`, run block by block."""
  hidden, residual = embed(model, params, images)
  block = block_module(model)
  for _, layer in layers(model, params):
    hidden, residual = run_block(block, layer, hidden, residual)
  return classify(model, params, hidden, residual)


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
