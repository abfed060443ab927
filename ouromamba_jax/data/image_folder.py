"""Decoding `root/<class>/<file>` image folders into uint8 arrays; the image suffixes every
dataset reads."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


def list_image_folder(root: str) -> tuple[list[str], np.ndarray, list[str]]:
  """Files sorted by (class folder, name); class index = alphabetical folder order."""
  classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if not classes:
    raise FileNotFoundError(f'{root} holds no class folders (expected {root}/<class>/<image>)')
  files, labels = [], []
  for index, cls in enumerate(classes):
    names = sorted(n for n in os.listdir(os.path.join(root, cls))
                   if n.lower().endswith(IMAGE_SUFFIXES))
    files += [os.path.join(root, cls, n) for n in names]
    labels += [index] * len(names)
  return files, np.asarray(labels, np.int32), classes


def decode_images(files: list[str]) -> np.ndarray:
  """Decodes to (N, H, W, 3) uint8 (every image the same size)."""
  out = []
  for f in files:
    with Image.open(f) as img:
      out.append(np.asarray(img.convert('RGB'), np.uint8))
  return np.stack(out)
