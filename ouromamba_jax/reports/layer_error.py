"""Per-layer SQNR and cosine of every quantized Linear: quantized vs FP outputs.

Two views per Linear, on the same images:
- `network`: the output in the quantized model (fed by the quantized layers before it) vs the
  output in the FP model: the error that has accumulated up to this layer.
- `local`: the quantized Linear (its weight and input quantizers) applied to the FP model's
  input of that layer vs the FP Linear: this layer's own error.

SQNR = 10 log10(sum y_fp^2 / sum (y_q - y_fp)^2) in dB over all outputs; cosine = mean over
tokens of cos(y_q, y_fp) along the output channels (the reconstruction loss's measure).
"""
from __future__ import annotations

import functools
import math
import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ouromamba_jax.quant import qtypes
from ouromamba_jax.quant import rewrite
from ouromamba_jax.reports import capture
from ouromamba_jax.io import atomic

JSON_FILE = 'layers.json'
MD_FILE = 'layers.md'


def quantized_linears(qparams) -> list[str]:
  """Paths of the Linears whose kernel the quantization pass replaced, in tree order."""
  return [p[:-len('/kernel')] for p, v in rewrite.quantized_leaves(qparams).items()
          if p.endswith('/kernel') and isinstance(v, (qtypes.QuantizedWeight,
                                                      qtypes.FakeQuantWeight))]


def _sums(y, ref):
  y = y.astype(jnp.float32).reshape(-1, y.shape[-1])
  ref = ref.astype(jnp.float32).reshape(-1, ref.shape[-1])
  dot = jnp.sum(y * ref, -1)
  cos = dot / (jnp.maximum(jnp.linalg.norm(y, axis=-1), 1e-12)
               * jnp.maximum(jnp.linalg.norm(ref, axis=-1), 1e-12))
  return jnp.stack([jnp.sum(ref * ref), jnp.sum((y - ref) ** 2), jnp.sum(cos),
                    jnp.asarray(cos.shape[0], jnp.float32)])


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _stage_sums(module, method, paths: tuple[str, ...], tree_fp, tree_q, inputs_fp, inputs_q):
  """Both views' sums for the Linears `paths` (relative to `module`) of one forward piece."""
  fp = capture.module_linear_io(module, tree_fp, *inputs_fp, method=method)
  q = capture.module_linear_io(module, tree_q, *inputs_q, method=method)
  out = {}
  for path in paths:
    x_fp, y_fp = fp[path]
    kernel = rewrite.get_path(tree_q, f'{path}/kernel')
    node = rewrite.get_path(tree_q, path)
    y_local = kernel.linear(x_fp, node.get('input_quantizer'), jnp.float32)
    if 'bias' in node:
      y_local = y_local + node['bias'].astype(jnp.float32)
    out[path] = jnp.stack([_sums(q[path][1], y_fp), _sums(y_local, y_fp)])
  return out


def _db(signal, noise) -> float:
  if noise <= 0:
    return math.inf
  return float(10.0 * math.log10(max(signal, 1e-30) / noise))


def _layer_order(row: dict[str, Any]) -> tuple[bool, tuple[int, ...]]:
  """The block's position, the numbers of the path's leading numbered parts (`layers_2`,
  VMamba's `layers_0/blocks_10`), then the Linears outside the blocks (the head runs last);
  the sort keeps the order inside a block. Tree order is alphabetical, which puts layers_10
  before layers_2 (and blocks_10 before blocks_2)."""
  position = []
  for part in row['layer'].split('/'):
    number = re.search(r'_(\d+)$', part)
    if number is None:
      break
    position.append(int(number.group(1)))
  return not position, tuple(position)


def layer_errors(model, params, qparams, images, batch_size: int = 16) -> list[dict[str, Any]]:
  """One row per quantized Linear, in block order: layer, block, sqnr_db, cosine,
  local_sqnr_db, local_cosine."""
  paths = tuple(quantized_linears(qparams))
  if not paths:
    return []
  images = jnp.asarray(images, jnp.float32)
  totals = None
  for start in range(0, images.shape[0], batch_size):
    part = capture.per_piece(model, (params, qparams), images[start:start + batch_size],
                             paths, _stage_sums)
    part = {p: np.asarray(v, np.float64) for p, v in part.items()}
    totals = part if totals is None else {p: totals[p] + part[p] for p in paths}
  rows = []
  for path in paths:
    (sig, noise, cos, n), (lsig, lnoise, lcos, ln) = totals[path]
    block = path.split('/')[0]
    rows.append({
        'layer': path, 'block': int(block.split('_')[1]) if block.startswith('layers_') else None,
        'sqnr_db': _db(sig, noise), 'cosine': float(cos / n),
        'local_sqnr_db': _db(lsig, lnoise), 'local_cosine': float(lcos / ln)})
  return sorted(rows, key=_layer_order)


SQNR_LINE = ('SQNR = 10 log10(sum y_fp^2 / sum (y_q - y_fp)^2): output power over quantization '
             'error power in dB; higher is better, each 6 dB is about one bit.')


def to_markdown(rows: Sequence[dict[str, Any]], images: int = 0) -> str:
  """The table in block order, under what it measured and what SQNR means."""
  head = (f'Per-layer error of the quantized Linears on {images} images (network: in the '
          'quantized model; local: this layer alone on FP inputs).\n' if images else '')
  head += f'{SQNR_LINE}\n\n'
  lines = ['| layer | SQNR (dB) | cosine | local SQNR (dB) | local cosine |',
           '|---|---:|---:|---:|---:|']
  for r in sorted(rows, key=_layer_order):
    lines.append(f'| {r["layer"]} | {r["sqnr_db"]:.2f} | {r["cosine"]:.5f} | '
                 f'{r["local_sqnr_db"]:.2f} | {r["local_cosine"]:.5f} |')
  return head + '\n'.join(lines) + '\n'


def write(directory: str, rows: Sequence[dict[str, Any]], images: int = 0) -> None:
  """layers.json and layers.md in `directory`."""
  atomic.write_json(os.path.join(directory, JSON_FILE), {'images': images, 'layers': list(rows)})
  atomic.write_text(os.path.join(directory, MD_FILE), to_markdown(rows, images))
