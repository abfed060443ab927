"""The OuroMamba-Gen loop: groups of images optimised in turn, guarded against NaN.

`generate(model, params, spec, seed)` runs in memory. A long run passes a `GroupStore` (the
`generate` stage keeps one in its workdir: finished groups, Orbax checkpoints of the group in
progress, the run description), and then a killed run continues where it stopped. Since each
image's randomness and gradient depend only on its own index, a resumed run gives the same
images as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Callable, Optional, Protocol

from absl import logging
import jax
import numpy as np

from ouromamba_jax import distributed
from ouromamba_jax import progress
from ouromamba_jax import stop_request
from ouromamba_jax.gen import objective
from ouromamba_jax.gen import optimize
from ouromamba_jax.gen.spec import GenSpec
from ouromamba_jax.models import registry

METRICS = objective.LOSS_NAMES


class NonFiniteGenerationError(FloatingPointError):
  """Gen's loss or pixels stopped being finite (a diverged run, not a damaged file)."""


@dataclasses.dataclass
class GenResult:
  images: np.ndarray          # (N, H, W, C) float32, normalised input space
  labels: np.ndarray          # (N,) int32 target classes
  history: list[dict]         # per group: {'group', 'indices', 'step', <metric>: [...]}


class GroupStore(Protocol):
  """Where a resumable run keeps its progress (implemented by the `generate` stage)."""

  def begin(self, description: dict) -> None:
    """Records what defines the run; refuses a store holding a run with other settings."""

  def finished_group(self, group: int) -> Optional[dict]:
    """A finished group's data (images, labels, indices, group, history), or None."""

  def latest_step(self) -> Optional[int]:
    """Global step of the newest in-progress checkpoint (group * iterations + steps), or None."""

  def restore(self, step: int, target: dict) -> dict:
    """The {'state', 'history'} checkpointed at `step` (host arrays, structured like target)."""

  def save(self, step: int, host: dict) -> None:
    """Checkpoints {'state', 'history'} of the group in progress at global `step`."""

  def save_group(self, group: int, data: dict) -> None:
    """Stores a finished group."""

  def location(self) -> str:
    """Where checkpoints are, for messages."""

  def close(self) -> None:
    """Waits for pending writes."""


def params_digest(params) -> str:
  """SHA-256 of the weights (names, dtypes, bytes): a rerun with another checkpoint of the same
  architecture must not continue a run made with the old one."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]:
    leaf = np.asarray(leaf)
    digest.update(f'{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape}'.encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def run_description(model, params, spec: GenSpec, seed: int) -> dict:
  """What defines the generated images: seed, architecture, compute dtype, weights, settings."""
  model_desc = registry.architecture(model)
  model_desc['dtype'] = str(np.dtype(model.dtype))  # the compute dtype changes the images
  gen = spec.defining_fields()
  gen['images_per_step'] = min(spec.images_per_step, spec.num_images)   # what is used
  desc = {'seed': seed, 'model': model_desc, 'params': params_digest(params), 'gen': gen}
  return json.loads(json.dumps(desc))


def check_spec(spec: GenSpec, model) -> None:
  """Clear errors for settings that cannot run on `model`, before anything is traced or
  written (a run.json written for a bad value would refuse the corrected settings)."""
  objective.check_objective(spec, model)
  optimize.check_settings(spec)
  if min(spec.num_images, spec.iterations, spec.images_per_step) < 1:
    raise ValueError(f'gen.num_images ({spec.num_images}), gen.iterations ({spec.iterations}) and '
                     f'gen.images_per_step ({spec.images_per_step}) must be >= 1')
  if spec.checkpoint_every < 0:
    raise ValueError(f'gen.checkpoint_every must be >= 0 (0 = only finished groups), got '
                     f'{spec.checkpoint_every}')
  mean, std = spec.mean, spec.std
  if not len(mean) == len(std) == model.in_chans or min(std) <= 0:
    raise ValueError(f'gen.mean {mean} and gen.std {std} must hold one value per input channel '
                     f'({model.in_chans}), std > 0: set them to the normalisation the model was '
                     'trained with (e.g. ouromamba_jax.data.cifar10.MEAN / STD).')
  group_size = min(spec.images_per_step, spec.num_images)
  if spec.num_images % group_size:
    raise ValueError(f'gen.num_images={spec.num_images} is not a multiple of gen.images_per_step='
                     f'{group_size}; pick images_per_step dividing num_images.')


def generate(model, params, spec: GenSpec, seed: int = 0, *, store: Optional[GroupStore] = None,
             on_step: Optional[Callable[[int], None]] = None) -> GenResult:
  """Synthesises spec.num_images images for `model` (a VisionMamba, VMamba or MambaVision) with FP `params`.

  `seed` sets the balanced random targets and every image's noise and augmentation. With a
  `store`, finished groups are kept and the group in progress is checkpointed every
  spec.checkpoint_every steps, and a rerun resumes; a SIGTERM (`stop_request`) checkpoints the
  step in progress and raises `stop_request.StopRequested`. `on_step(global_step)` is called
  after each step has been checked (tests use it to simulate a kill).
  """
  check_spec(spec, model)
  num_images, iters = spec.num_images, spec.iterations
  group_size = min(spec.images_per_step, num_images)
  mesh = optimize.data_mesh(spec.num_devices)
  if group_size % mesh.size:
    raise ValueError(f'gen.images_per_step={group_size} must be a multiple of the {mesh.size} '
                     'devices it is split over (or set gen.num_devices).')
  num_groups = num_images // group_size
  if store is not None:
    store.begin(run_description(model, params, spec, seed))

  labels_all = optimize.target_labels(num_images, model.num_classes, seed)
  gen_model = objective.generation_model(model, spec)
  optimizer = optimize.build_optimizer(spec)
  step_fn = optimize.make_step(gen_model, spec, optimizer, mesh)
  params = jax.device_put(jax.device_get(params), optimize.replicated(mesh))
  shape = (model.img_size, model.img_size, model.in_chans)

  finished = {}
  if store is not None:
    finished = {g: data for g in range(num_groups)
                if (data := store.finished_group(g)) is not None}
  throughput = progress.Throughput(num_images * iters, len(finished) * group_size * iters)
  # The store is closed before the context is left (a SIGTERM Gen did not answer is passed on
  # there).
  with stop_request.on_sigterm():
    try:
      for g in range(num_groups):
        if g in finished:
          continue
        _stop_if_requested(store, f'before group {g + 1}/{num_groups}')
        indices = np.arange(g * group_size, (g + 1) * group_size)
        finished[g] = _run_group(
            g, num_groups, indices, labels_all[indices], seed=seed, shape=shape, spec=spec,
            mesh=mesh, params=params, step_fn=step_fn, optimizer=optimizer, store=store,
            throughput=throughput, on_step=on_step)
    finally:
      if store is not None:
        store.close()

  images = np.concatenate([finished[g]['images'] for g in range(num_groups)])
  history = [_history_entry(finished[g]) for g in range(num_groups)]
  return GenResult(images, labels_all, history)


def _stop_if_requested(store: Optional[GroupStore], where: str) -> None:
  """Raises StopRequested when a SIGTERM asked Gen to stop (`stop_request`); the caller has
  saved what a rerun needs to resume from `where`."""
  if not stop_request.requested():
    return
  saved = (f'its progress is saved in {store.location()}; rerun the same command to resume'
           if store is not None else 'nothing was saved (no store: this run is not checkpointed)')
  raise stop_request.StopRequested(f'OuroMamba-Gen stopped by SIGTERM {where}; {saved}.')


def _history_entry(group_data: dict) -> dict:
  hist = group_data['history']
  entry = {'group': int(group_data['group']), 'indices': group_data['indices'].tolist(),
           'step': list(range(1, hist.shape[0] + 1))}
  entry.update({name: hist[:, i].tolist() for i, name in enumerate(METRICS)})
  return entry


def _eta(throughput: progress.Throughput) -> str:
  left = throughput.seconds_left()
  return progress.format_seconds(left) if left is not None else '?'


def _first_step(step_fn, args, n: int):
  """The process's first Gen step, announced: it compiles the forward and backward pass,
  minutes on a CPU during which nothing else would be printed."""
  logging.info('gen: compiling the Gen step (%d images, forward + backward; minutes on a CPU, '
               'seconds from a warm compilation cache) ...', n)
  t0 = time.perf_counter()
  out = jax.block_until_ready(step_fn(*args))
  logging.info('gen: first step (compilation included) took %.0f s', time.perf_counter() - t0)
  return out


def _run_group(g, num_groups, indices, labels, *, seed, shape, spec: GenSpec, mesh, params,
               step_fn, optimizer, store: Optional[GroupStore], throughput, on_step) -> dict:
  """Optimises one group to the end (resuming from its checkpoint); stores the finished group."""
  iters, every = spec.iterations, (spec.checkpoint_every if store is not None else 0)
  log_every = max(spec.log_every, 1)
  n = len(indices)
  keys = jax.jit(optimize.image_keys, static_argnums=0,
                 out_shardings=optimize.batch_sharding(mesh))(seed, indices)
  labels_dev = jax.device_put(labels, optimize.batch_sharding(mesh))
  images = optimize.initial_images(keys, shape, float(spec.init_std))
  state = optimize.GroupState(images, optimizer.init(images))
  history = np.full((iters, len(METRICS)), np.nan, np.float32)
  start = 0
  latest = store.latest_step() if store is not None else None
  in_this_group = latest is not None and latest // iters == g
  if in_this_group and latest % iters:
    start = latest % iters
    restored = store.restore(latest, {'state': jax.tree.map(distributed.gather, state),
                                     'history': history})
    state = jax.tree.map(np.asarray, restored['state'])
    history = np.asarray(restored['history'], np.float32)
    logging.info('gen: group %d/%d resumes at step %d from %s', g + 1, num_groups, start,
                 store.location())
    throughput.restore(start * n)
  state = optimize.shard_batch_tree(state, mesh, n)
  last_good = [latest if in_this_group else None]

  def record(t, metrics):
    m = jax.device_get(metrics)
    global_step = g * iters + t + 1
    if not (m['loss_finite'] and m['pixels_finite']):
      what = 'loss' if not m['loss_finite'] else 'pixels (after the Adam update)'
      if store is None:
        where = 'none (no store: the run is not checkpointed)'
      elif last_good[0] is not None:
        where = f'step {last_good[0]} in {store.location()}'
      else:
        where = 'none for this group (it restarts from noise)'
      if t == 0:   # no learning rate has acted yet: the model or its input is broken
        advice = ('at the first step this is not the learning rate: the model weights or the '
                  'input are broken; load the checkpoint with load_checkpoint (it names a NaN/Inf '
                  'tensor) and check gen.mean/std and gen.init_std.')
      else:
        advice = (f'last good checkpoint: {where}. Check the model weights, or lower gen.lr in '
                  'a new workdir (this one refuses other settings); a rerun with the same '
                  'settings resumes from that checkpoint.')
      raise NonFiniteGenerationError(
          f'OuroMamba-Gen: non-finite {what} at group {g + 1}/{num_groups}, step {t + 1}/'
          f'{iters} (global step {global_step}); {advice}')
    history[t] = [m[name] for name in METRICS]
    throughput.advance(n)
    if (t + 1) % log_every == 0 or t + 1 == iters:
      logging.info('gen group %d/%d step %d/%d  loss %.4f (L_C %.4f  L_PSE %.4f  L_O %.4f)  '
                   '%.1f img-it/s  ETA %s', g + 1, num_groups, t + 1, iters, m['total'],
                   m['contrastive'], m['pse'], m['output'], throughput.rate(), _eta(throughput))
    if on_step is not None:
      on_step(global_step)

  pending = None
  for t in range(start, iters):
    args = (params, state, labels_dev, keys, t)
    if not throughput.started and pending is None:
      state, metrics = _first_step(step_fn, args, n)
    else:
      state, metrics = step_fn(*args)
    if pending is not None:
      record(*pending)  # the previous step's metrics, read while this step runs
    pending = (t, metrics)
    checkpoint_due = every and (t + 1) % every == 0
    stopping = stop_request.requested()
    if (checkpoint_due or (stopping and store is not None)) and t + 1 < iters:
      record(*pending)
      pending = None
      store.save(g * iters + t + 1, {'state': jax.tree.map(distributed.gather, state),
                                     'history': history})
      last_good[0] = g * iters + t + 1
    if stopping and t + 1 < iters:
      _stop_if_requested(store, f'after step {t + 1}/{iters} of group {g + 1}/{num_groups}')
  if pending is not None:
    record(*pending)

  data = {'images': distributed.gather(state.images).astype(np.float32),
          'labels': np.asarray(labels, np.int32), 'indices': indices, 'group': np.int32(g),
          'history': history}
  if store is not None:
    store.save_group(g, data)
  return data
