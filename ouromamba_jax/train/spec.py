"""TrainSpec: the testbed training recipe (mode `train`), every default and its meaning."""
from __future__ import annotations

import dataclasses

from ouromamba_jax.spec_fields import field


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """The testbed recipe (mode `train`)."""
  epochs: int = field(60, 'passes over the training images')
  batch_size: int = field(256, 'images per step')
  train_images: int = field(0, '0 = the whole training split, else a seeded random subset')
  learning_rate: float = field(1e-3, 'peak AdamW lr')
  warmup_epochs: float = field(3.0, 'linear warmup length')
  final_lr_ratio: float = field(0.01, 'cosine decays to learning_rate * this')
  weight_decay: float = field(0.05, 'AdamW weight decay (not on norms, biases, A, D, tokens)')
  grad_clip: float = field(1.0, 'global gradient-norm clip')
  label_smoothing: float = field(0.1, 'cross-entropy label smoothing')
  crop_padding: int = field(4, 'random crop with zero padding')
  horizontal_flip: bool = field(True, 'random horizontal flip')
  compute_dtype: str = field('bfloat16', 'float32 | bfloat16 (params stay fp32)')
  eval_every_epochs: int = field(5, 'test accuracy every this many epochs')
  log_every_steps: int = field(50, 'progress line every this many steps')
  checkpoint_every_steps: int = field(
      500, 'Orbax checkpoint every this many steps (and every epoch)')
  keep_checkpoints: int = field(2, 'Orbax checkpoints kept')
  max_seconds: float = field(0.0, '> 0: stop (with a checkpoint) after this long; rerun to resume')

  def __post_init__(self):
    if not self.grad_clip > 0:
      raise ValueError(f'train.grad_clip must be > 0, got {self.grad_clip!r} (0 clips every '
                       'update to zero, so training silently stops learning).')
