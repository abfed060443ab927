"""One block of the forward at a time (Vim, VMamba): embed, block i, classify, each jitted once.

Why: calibration reconstructs block by block and the reports compare FP and quantized streams
per block, so they need the model cut at block boundaries. The pieces are the model's own:
`VisionMamba.embed`, the Block that its scanned forward applies (`VisionMamba.block`), and
`VisionMamba.classify`; the blocks of a model share one structure, so one compiled block serves
all of them. The whole forward is `model.apply` (its blocks under one scan).

Calibration sees a model as `pieces`: the blocks in order, each applied as
`module.apply({'params': tree}, hidden, residual) -> (branch, residual)`, whose first output the
reconstruction loss compares (Vim: the mixer output; VMamba: the block's residual branches,
output - input, since it has no separate mixer output), plus the float piece that runs on the
stream after a block (VMamba's downsample at the end of a stage, kept float). VMamba's stream is
(last branch, x): the block reads x only (`VSSBlock` with a stream), so it is exact.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from ouromamba_jax.models import vim
from ouromamba_jax.models import vmamba


def supports(model) -> bool:
  """Whether the model runs block by block here (Vim, VMamba); others (MambaVision's hybrid
  stages) are calibrated in one float pass (DEVIATIONS.md)."""
  return isinstance(model, (vim.VisionMamba, vmamba.VMamba))


@functools.lru_cache(maxsize=None)
def block_module(model: vim.VisionMamba) -> vim.Block:
  """The model's Block (cached per model config, so jitted functions keyed on it are reused)."""
  return model.block()


@functools.partial(jax.jit, static_argnums=0)
def run_block(block: vim.Block, layer, hidden, residual):
  """(mixer output, residual) of one block with the given (float or quantized) params."""
  return block.apply({'params': layer}, hidden, residual)


@functools.partial(jax.jit, static_argnums=0)
def embed(model, params, images):
  """The first block's stream, as in `model.apply`: Vim (tokens (B, L, d_model), residual zeros
  fp32); VMamba (zeros, the patch embedding (B, H, W, dims))."""
  if isinstance(model, vmamba.VMamba):
    x = model.apply({'params': params}, images, method=vmamba.VMamba.embed)
    return jnp.zeros_like(x), x
  hidden = model.apply({'params': params}, images, method=vim.VisionMamba.embed)
  return hidden, jnp.zeros(hidden.shape, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Piece:
  """A calibrated block: its param path, its module, and the float module run on the stream
  after it (`run_after`; None: nothing) with that module's param path."""
  name: str
  module: Any
  after: Any = None
  after_name: str = ''


@functools.lru_cache(maxsize=None)
def pieces(model) -> tuple[Piece, ...]:
  """The blocks of `model` in forward order (cached per model config)."""
  if not isinstance(model, vmamba.VMamba):
    return tuple(Piece(f'layers_{i}', block_module(model)) for i in range(model.depth))
  out = []
  for s, depth in enumerate(model.depths):
    stage = model.stage(s)
    for j in range(depth):
      last = j == depth - 1 and stage.out_dim is not None
      out.append(Piece(f'layers_{s}/blocks_{j}', stage.block(j),
                       stage.downsample() if last else None,
                       f'layers_{s}/downsample' if last else ''))
  return tuple(out)


def piece_of(model, path: str) -> Optional[int]:
  """Index of the piece whose params hold `path`, or None (outside every block)."""
  return next((i for i, p in enumerate(pieces(model)) if path.startswith(p.name + '/')), None)


@functools.partial(jax.jit, static_argnums=0)
def run_after(module, tree, hidden, residual):
  """VMamba's downsample on the stream x (= `residual`) -> (zeros, downsampled x)."""
  del hidden
  x = module.apply({'params': tree}, residual)
  return jnp.zeros_like(x), x


def _subtree(tree, path: str):
  return functools.reduce(lambda node, key: node[key], path.split('/'), tree)


def stages(model, trees, images):
  """Yields (prefix, module, method, subtrees, inputs) for each piece of the forward after the
  embedding: every block ('layers_i/' or VMamba's 'layers_s/blocks_j/', its module, None =
  __call__), then the classifier ('', the model, its `classify`). `trees` are parameter trees
  (e.g. FP and quantized) run side by side: subtrees[j] and inputs[j] (its stream) belong to
  trees[j]. Report code runs `module.apply({'params': subtree}, *inputs, method=method)` per
  piece and jits it once per (module, method), not once per model. VMamba's float downsamples
  run between the pieces, unreported (they hold no Linear). A model without a block-by-block
  form (`supports`: MambaVision) is one piece: ('', the model, __call__) on the images."""
  if not supports(model):
    yield '', model, None, list(trees), [(images,)] * len(trees)
    return
  streams = [embed(model, tree, images) for tree in trees]
  for piece in pieces(model):
    subtrees = [_subtree(tree, piece.name) for tree in trees]
    yield piece.name + '/', piece.module, None, subtrees, streams
    streams = [run_block(piece.module, sub, *stream) for sub, stream in zip(subtrees, streams)]
    if piece.after is not None:
      streams = [run_after(piece.after, _subtree(tree, piece.after_name), *stream)
                 for tree, stream in zip(trees, streams)]
  yield '', model, type(model).classify, list(trees), streams
