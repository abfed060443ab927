"""Small synthetic ImageNet-format folders for the data and evaluate tests."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image


def random_image(rng, height: int, width: int, mode: str = 'RGB') -> Image.Image:
  channels = {'RGB': 3, 'RGBA': 4, 'L': 1}[mode]
  pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
  return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def labels_folder(root: str, labels, *, seed: int = 0, size=(40, 30), suffix='.png') -> list[str]:
  """root/data/img_NNN.png + root/dataset.txt (`./data/FILE, LABEL`); returns the file paths."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, 'data'), exist_ok=True)
  files, lines = [], []
  for i, label in enumerate(labels):
    name = f'img_{i:03d}{suffix}'
    random_image(rng, size[0] + i % 3, size[1]).save(os.path.join(root, 'data', name))
    files.append(os.path.join(root, 'data', name))
    lines.append(f'./data/{name}, {int(label)}\n')
  with open(os.path.join(root, 'dataset.txt'), 'w') as f:
    f.writelines(lines)
  return files


def class_folders(root: str, counts: dict[str, int], *, seed: int = 0, size=(30, 40)) -> None:
  """root/<class>/<n>.png with counts[class] images each."""
  rng = np.random.default_rng(seed)
  for cls, count in counts.items():
    os.makedirs(os.path.join(root, cls), exist_ok=True)
    for i in range(count):
      random_image(rng, *size).save(os.path.join(root, cls, f'{i:02d}.png'))
