"""The testbed training recipe: AdamW schedule, epoch order and the jitted train step.

The whole dataset lives on the device as uint8 and augmentation runs inside the jitted
step, so a small model is not starved by a host input pipeline. Everything random is a
pure function of (seed, step): the epoch permutation of (seed, epoch), the augmentation key
of (seed, step), so the `train` stage's resume continues the same run bit for bit.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ouromamba_jax.data import normalization
from ouromamba_jax.models import layers
from ouromamba_jax.train import augment
from ouromamba_jax.train.spec import TrainSpec


# 2-D params without weight decay: Vim's A logs and tokens, VMamba's stacked A_logs (the
# official VMamba marks A_logs/Ds `_no_weight_decay`; Ds is 1-D, so skipped anyway).
NO_DECAY = ('A_log', 'A_b_log', 'A_logs', 'pos_embed', 'cls_token')
BN_MOMENTUM = 0.1    # torch BatchNorm's default (the official MambaVision training)


def make_optimizer(spec: TrainSpec, steps_per_epoch: int):
  """AdamW with linear warmup + cosine decay; no weight decay on norms, biases, A, D, tokens."""
  total = spec.epochs * steps_per_epoch
  warmup = min(int(spec.warmup_epochs * steps_per_epoch), max(total - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, spec.learning_rate, warmup, max(total, warmup + 1), spec.learning_rate * spec.final_lr_ratio)

  def decay_mask(params):  # no weight decay on norms, biases, A logs, D, embeddings
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x.ndim >= 2 and not any(
            getattr(k, 'key', '') in NO_DECAY for k in path),
        params)

  return optax.chain(
      optax.clip_by_global_norm(spec.grad_clip),
      optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=spec.weight_decay, mask=decay_mask),
  ), schedule


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def make_train_step(model, optimizer, spec: TrainSpec, mean, std):
  """A model with BatchNorms (a `train_batch_norm` field: MambaVision) trains in batch-statistics
  mode, and its running statistics (params, so every stage evaluates them) follow the batches
  by torch's momentum after each update; their own gradients are zero."""
  batch_norm = 'train_batch_norm' in getattr(model, '__dataclass_fields__', {})
  train_model = model.clone(train_batch_norm=True) if batch_norm else model

  def loss_fn(params, images, labels):
    if batch_norm:
      logits, updated = train_model.apply({'params': params}, images, mutable=['batch_stats'])
      batch_stats = updated['batch_stats']
    else:
      logits, batch_stats = model.apply({'params': params}, images), {}
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), spec.label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, (accuracy, batch_stats)

  def step(state, all_images, all_labels, batch_index, key):
    images = augment.random_crop_flip(key, all_images[batch_index], spec.crop_padding,
                                      spec.horizontal_flip)
    images = normalization.normalize(images, mean, std)
    labels = all_labels[batch_index]
    (loss, (acc, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'], images, labels)
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    if batch_stats:
      params = layers.merge_batch_stats(params, batch_stats, BN_MOMENTUM)
    new_state = {'params': params, 'opt_state': opt_state, 'step': state['step'] + 1}
    return new_state, {'loss': loss, 'accuracy': acc, 'grad_norm': optax.tree.norm(grads)}

  return jax.jit(step, donate_argnums=(0,))
