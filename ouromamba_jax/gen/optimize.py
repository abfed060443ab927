"""Pixel optimisation pieces: targets, initial noise, Adam, augmentation, the jitted step.

Every image's randomness (initial noise, per-step jitter/flip) comes from a key folded from
its global index, and its loss is a sum of per-image terms (no batch statistics). So an
image's trajectory does not depend on which group or device it is processed on (exactly for
a resume, which repeats the same computation; up to float rounding across device counts or
group sizes), and the batch can be split freely over devices.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ouromamba_jax.distributed import DATA_AXIS, data_mesh  # pylint: disable=unused-import
from ouromamba_jax.gen import objective
from ouromamba_jax.gen.spec import GenSpec

SCHEDULES = ('cosine', 'constant')


def target_labels(num_images: int, num_classes: int, seed: int) -> np.ndarray:
  """Balanced random targets: class counts differ by at most one, order shuffled by `seed`."""
  rng = np.random.default_rng(seed)
  rounds = -(-num_images // num_classes)
  labels = np.concatenate([rng.permutation(num_classes) for _ in range(rounds)])[:num_images]
  return rng.permutation(labels).astype(np.int32)


def image_keys(seed: int, indices: np.ndarray) -> jax.Array:
  """One key per image, from its global index (independent of grouping)."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32))


def initial_images(keys: jax.Array, shape: tuple[int, int, int], init_std: float) -> jax.Array:
  """Gaussian noise in the normalised input space: (len(keys),) + shape."""
  init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0x1D17))(keys)
  return init_std * jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(init_keys)


def check_settings(spec: GenSpec) -> None:
  """Clear errors for pixel-optimisation settings that cannot run: `generator.check_spec` calls
  it before a run writes anything, and `make_step` for runners that build their own step."""
  if spec.schedule not in SCHEDULES:
    raise ValueError(f'gen.schedule must be one of {SCHEDULES}, got {spec.schedule!r}')
  if not spec.lr > 0:
    raise ValueError(f'gen.lr must be > 0, got {spec.lr}')
  if spec.schedule == 'cosine' and not 0 <= spec.warmup_fraction <= 1:
    raise ValueError(f'gen.warmup_fraction must be in [0, 1], got {spec.warmup_fraction}')
  if int(spec.jitter) < 0:
    raise ValueError(f'gen.jitter must be >= 0 pixels (0 = off), got {int(spec.jitter)}')


def learning_rate_schedule(spec: GenSpec) -> optax.Schedule:
  """gen.lr over the iterations: constant, or cosine decay after a linear warmup."""
  if spec.schedule == 'constant':
    return optax.constant_schedule(spec.lr)
  warmup = int(round(spec.warmup_fraction * spec.iterations))
  if not warmup:
    return optax.cosine_decay_schedule(spec.lr, spec.iterations)
  return optax.warmup_cosine_decay_schedule(
      init_value=spec.lr / warmup, peak_value=spec.lr, warmup_steps=warmup,
      decay_steps=max(spec.iterations, warmup + 1), end_value=0.0)


def build_optimizer(spec: GenSpec) -> optax.GradientTransformation:
  """Adam on pixels (PSAQ-ViT/DeepInversion-style betas by default)."""
  return optax.adam(learning_rate_schedule(spec), b1=spec.b1, b2=spec.b2, eps=1e-8)


def augment(images: jax.Array, keys: jax.Array, jitter: int, flip: bool) -> jax.Array:
  """Per-image random roll by up to ±jitter pixels (both axes) and horizontal flip (p=0.5)."""
  if not jitter and not flip:
    return images

  def one(image, key):
    k_shift, k_flip = jax.random.split(key)
    if jitter:
      shift = jax.random.randint(k_shift, (2,), -jitter, jitter + 1)
      image = jnp.roll(image, (shift[0], shift[1]), axis=(0, 1))
    if flip:
      image = jnp.where(jax.random.bernoulli(k_flip), image[:, ::-1], image)
    return image

  return jax.vmap(one)(images, keys)


def pixel_bounds(mean, std) -> tuple[np.ndarray, np.ndarray]:
  """Normalised values of pixel 0 and 1 per channel: the valid-image box."""
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  return -mean / std, (1 - mean) / std


class GroupState(NamedTuple):
  images: jax.Array
  opt_state: optax.OptState


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def shard_batch_tree(tree, mesh: Mesh, batch: int):
  """device_put: leaves with a leading batch axis are split over the mesh, the rest replicated."""
  def place(x):
    x = x if isinstance(x, jax.Array) else jnp.asarray(x)
    sharding = batch_sharding(mesh) if x.ndim and x.shape[0] == batch else replicated(mesh)
    return jax.device_put(x, sharding)
  return jax.tree.map(place, tree)


def make_step(gen_model, spec: GenSpec, optimizer: optax.GradientTransformation,
              mesh: Mesh | None = None) -> Callable:
  """jit(step)(params, GroupState, labels, keys, step) -> (GroupState, metrics).

  metrics: per-image means of the loss terms of this step (before the update) and two flags,
  `loss_finite` and `pixels_finite` (after the update), for the NaN guard.

  With `mesh` (the data mesh the batch is split over), every device computes the losses and
  pixel gradients of its own images (`shard_map`; each image's loss is its own, so nothing is
  exchanged). Under plain jit sharding XLA cannot split the model's Pallas kernels (custom
  calls) and gathers the whole batch onto every device: on 4 H100s a 128-image Vim-S step
  asked for a 68 GiB buffer.
  """
  check_settings(spec)
  lo, hi = pixel_bounds(spec.mean, spec.std)
  jitter, flip, clip = int(spec.jitter), bool(spec.flip), bool(spec.clip_pixels)

  def grads_and_terms(params, images, labels, step_keys):
    def loss_fn(images):
      views = augment(images, step_keys, jitter, flip)
      terms = objective.per_image_losses(gen_model, params, views, labels, spec)
      return jnp.sum(terms['total']), terms  # a sum: each image's gradient is its own

    return jax.grad(loss_fn, has_aux=True)(images)

  if mesh is not None:
    data = PartitionSpec(DATA_AXIS)
    grads_and_terms = jax.shard_map(grads_and_terms, mesh=mesh,
                                    in_specs=(PartitionSpec(), data, data, data),
                                    out_specs=(data, data), check_vma=False)

  def step(params, state: GroupState, labels, keys, step_index):
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step_index))(keys)
    grads, terms = grads_and_terms(params, state.images, labels, step_keys)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.images)
    images = optax.apply_updates(state.images, updates)
    if clip:
      images = jnp.clip(images, lo, hi)
    metrics = {name: jnp.mean(value) for name, value in terms.items()}
    metrics['loss_finite'] = jnp.all(jnp.isfinite(terms['total']))
    metrics['pixels_finite'] = jnp.all(jnp.isfinite(images))
    return GroupState(images, opt_state), metrics

  return jax.jit(step, donate_argnums=(1,))
