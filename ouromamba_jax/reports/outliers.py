"""Outlier rate per time step and block: how often the dynamic-outlier quantizers fire.

For every quantized Linear whose input quantizer detects outliers (outliers 'int' or 'float'),
the quantized model is run on the images, the input that quantizer receives is captured and
the run-time outlier mask (`quant.activations.detect_outliers`) is recomputed from it. The
rate at step t is the fraction of (sample, channel) entries flagged as outliers. Backward-scan
sites (`*_b`) see the sequence flipped; their rates are flipped back so a column is always a
token position. A block's rate is the mean over its Linear inputs. (SSM-tensor sites — Δ, B,
C — are not included: they are not Linear inputs.)
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ouromamba_jax.quant import activations as act_lib
from ouromamba_jax.quant import qtypes
from ouromamba_jax.quant import rewrite
from ouromamba_jax.quant import weights as w_lib
from ouromamba_jax.reports import capture
from ouromamba_jax.io import atomic
from ouromamba_jax.reports import heatmap

JSON_FILE = 'outliers.json'
PNG_FILE = 'outliers.png'


def outlier_sites(qparams) -> list[str]:
  """Linear paths whose input quantizer has dynamic outliers."""
  found = []
  for path, value in rewrite.quantized_leaves(qparams).items():
    if (path.endswith('/input_quantizer') and isinstance(value, qtypes.ActQuantizer)
        and value.spec.outliers != 'none' and value.layout == 'steps'):
      found.append(path[:-len('/input_quantizer')])
  return found


def piece_masks(module, method, paths: tuple[str, ...], tree, inputs) -> dict[str, jax.Array]:
  """{path: the run-time outlier mask (B, L, K) bool} of the Linear inputs `paths` of one piece
  (`capture.per_piece`; traceable): each input as its quantizer sees it (divided by the
  smoothing factors where the weight has them), through `detect_outliers`."""
  io = capture.module_linear_io(module, tree, *inputs, method=method)
  out = {}
  for path in paths:
    x = io[path][0].astype(jnp.float32)
    node = rewrite.get_path(tree, path)
    smooth = getattr(node['kernel'], 'smooth', None)
    if smooth is not None:
      x = x / jnp.maximum(smooth, w_lib.MIN_SMOOTH)
    quantizer = node['input_quantizer']
    if x.ndim != 3:
      x = x[:, None, :]
    out[path] = act_lib.detect_outliers(x, quantizer.inlier_scale, quantizer.spec)
  return out


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _stage_counts(module, method, paths: tuple[str, ...], tree, inputs):
  """(L,) flagged fractions summed over samples, for the Linear inputs `paths` of one piece."""
  return {path: jnp.sum(jnp.mean(mask.astype(jnp.float32), axis=2), axis=0)
          for path, mask in piece_masks(module, method, paths, tree, inputs).items()}


def outlier_rates(model, qparams, images, batch_size: int = 16) -> dict[str, Any]:
  """{'sites': {path: rate (L,)}, 'blocks': (depth, L) mean rate per block (None rows: no
  outlier sites), 'tokens': L, 'cls_index': the class token's position}; rates are fractions
  of (sample, channel) entries."""
  paths = tuple(outlier_sites(qparams))
  images = jnp.asarray(images, jnp.float32)
  if not hasattr(model, 'cls_index'):   # VMamba: each stage has its own grid, no one token axis
    return {'sites': {}, 'blocks': [], 'tokens': 0, 'images': int(images.shape[0]),
            'note': 'the per-token heatmap is made for Vim only (one token sequence)'}
  if not paths:
    return {'sites': {}, 'blocks': [], 'tokens': 0, 'images': int(images.shape[0])}
  counts = None
  for start in range(0, images.shape[0], batch_size):
    part = capture.per_piece(model, (qparams,), images[start:start + batch_size], paths,
                             _stage_counts)
    part = {p: np.asarray(v, np.float64) for p, v in part.items()}
    counts = part if counts is None else {p: counts[p] + part[p] for p in paths}
  sites = {}
  for path in paths:
    rate = counts[path] / images.shape[0]
    if path.endswith('_b'):
      rate = rate[::-1]
    sites[path] = rate
  length = len(next(iter(sites.values())))
  depth = 1 + max((int(p.split('/')[0].split('_')[1]) for p in sites
                   if p.startswith('layers_')), default=-1)
  blocks: list[Optional[list[float]]] = []
  for i in range(depth):
    own = [r for p, r in sites.items() if p.startswith(f'layers_{i}/')]
    blocks.append(list(map(float, np.mean(own, axis=0))) if own else None)
  return {'sites': {p: list(map(float, r)) for p, r in sites.items()}, 'blocks': blocks,
          'tokens': int(length), 'images': int(images.shape[0]),
          'cls_index': int(model.cls_index)}


def mean_rate(directory: str) -> Optional[float]:
  """The mean outlier rate over every site and step of `directory`'s outliers.json (the
  fraction of Linear-input entries flagged); None without the file or without outlier sites."""
  path = os.path.join(directory, JSON_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    sites = json.load(f).get('sites', {})
  rates = [float(np.mean(r)) for r in sites.values() if len(r)]
  return float(np.mean(rates)) if rates else None


def caption(rates: dict[str, Any]) -> str:
  """What a heatmap cell is, in one line: the measure and the block-relative sites averaged."""
  names = sorted({p.split('/', 1)[1] for p in rates['sites'] if p.startswith('layers_')})
  return (f'cell: fraction of (image, channel) entries flagged as outliers on {rates["images"]} '
          f'images, mean over the block\'s inputs to {", ".join(names)}')


def write(directory: str, rates: dict[str, Any], title: str = '') -> Optional[str]:
  """outliers.json and (when there are outlier sites) outliers.png in `directory`."""
  atomic.write_json(os.path.join(directory, JSON_FILE), rates)
  rows = [r for r in rates['blocks'] if r is not None]
  if not rows:
    return None
  grid = np.asarray([r if r is not None else [np.nan] * rates['tokens']
                     for r in rates['blocks']], np.float64)
  png = os.path.join(directory, PNG_FILE)
  heatmap.write_png(png, grid, title=f'outlier rate {title}'.strip(), x_label='token',
                    y_label='block', bar_label='outlier rate', caption=caption(rates),
                    mark_column=rates.get('cls_index'), mark_label='cls')
  return png
