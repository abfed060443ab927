"""Files the `generate` stage leaves in `<workdir>/gen/`, all written atomically (tmp + os.replace).

  synthetic.npz       images (N, H, W, C) float32 in the model's normalised input space,
                      labels (N,) int32 target classes, mean (C,), std (C,)
  synthetic_grid.png  the images de-normalised to [0, 255], each labelled with its target
  losses.json         per-step loss curves (mean over the group's images), one entry per group
  losses.png          the same curves, one panel per loss term, one line per group
  quality.json        top-1 agreement of the FP model with the targets (synthetic vs noise),
                      and under each of gen.judges (judge/<name>/...)
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ouromamba_jax.data.normalization import denormalize
from ouromamba_jax.io.atomic import write_json, write_npz, write_png
from ouromamba_jax.reports import curves

GEN_SUBDIR = 'gen'
SYNTHETIC_FILE = 'synthetic.npz'
GRID_FILE = 'synthetic_grid.png'
LOSSES_FILE = 'losses.json'
LOSSES_PNG = 'losses.png'
QUALITY_FILE = 'quality.json'


def gen_dir(workdir: str) -> str:
  return os.path.join(workdir, GEN_SUBDIR)


def synthetic_path(workdir: str) -> str:
  """Where `generate` puts the synthetic calibration set for a pipeline workdir."""
  return os.path.join(gen_dir(workdir), SYNTHETIC_FILE)


def load_synthetic(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(images (N, H, W, C) float32 normalised, labels (N,) int32) from a synthetic.npz."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist; run --config.mode=generate first.')
  with np.load(path) as data:
    return data['images'], data['labels']


def label_grid(images_uint8: np.ndarray, labels: np.ndarray, class_names: Sequence[str] = (),
               columns: int = 16, min_tile: int = 64) -> Image.Image:
  """A labelled grid: each tile is an image (upscaled to >= min_tile px) under its target class."""
  n, h, w, c = images_uint8.shape
  if c not in (1, 3):
    raise ValueError(f'can only draw 1- or 3-channel images, got {c} channels')
  scale = max(1, -(-min_tile // max(h, w)))
  th, tw, caption, pad = h * scale, w * scale, 12, 2
  columns = max(1, min(columns, n))
  rows = -(-n // columns)
  canvas = Image.new('RGB', (columns * (tw + pad) + pad, rows * (th + caption + pad) + pad),
                     (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()
  for i in range(n):
    tile = images_uint8[i] if c == 3 else np.repeat(images_uint8[i], 3, axis=-1)
    tile = Image.fromarray(tile).resize((tw, th), Image.NEAREST)
    x = pad + (i % columns) * (tw + pad)
    y = pad + (i // columns) * (th + caption + pad)
    label = int(labels[i])
    text = f'{label}:{class_names[label]}' if label < len(class_names) else str(label)
    draw.text((x, y), text[:max(3, tw // 6)], fill=(0, 0, 0), font=font)
    canvas.paste(tile, (x, y + caption))
  return canvas


def write_synthetic_set(directory: str, images: np.ndarray, labels: np.ndarray,
                        mean: Sequence[float], std: Sequence[float],
                        class_names: Sequence[str] = (), columns: int = 16) -> None:
  """synthetic.npz and synthetic_grid.png in `directory`."""
  mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  write_npz(os.path.join(directory, SYNTHETIC_FILE), images=np.asarray(images, np.float32),
            labels=np.asarray(labels, np.int32), mean=mean32, std=std32)
  grid = label_grid(denormalize(images, mean, std), labels, class_names, columns)
  write_png(os.path.join(directory, GRID_FILE), grid)


def write_losses(directory: str, metrics: Sequence[str], groups: Sequence[dict]) -> None:
  """losses.json (the numbers) and losses.png (one panel per loss term) in `directory`."""
  write_json(os.path.join(directory, LOSSES_FILE), {'metrics': list(metrics),
                                                     'groups': list(groups)})
  curves.write_png(os.path.join(directory, LOSSES_PNG), curves.gen_panels(groups, metrics),
                   caption='OuroMamba-Gen loss terms per step (mean over each group\'s images)')
