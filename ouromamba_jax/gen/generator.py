"""The OuroMamba-Gen loop: groups of images optimised in turn, resumable, guarded against NaN.

Layout of the generation directory:
  run.json               what defines the run (seed, model, weights digest, gen settings);
                         resuming with different ones is refused
  groups/group_NNNN.npz  finished groups (images, labels, indices, loss history); never redone
  checkpoints/           Orbax CheckpointManager of the group in progress (images, Adam state,
                         loss history), saved every `checkpoint_every` steps; Orbax step =
                         group * iterations + steps done in that group
Killed at any point, a rerun loads the finished groups and continues the current group from
its last checkpoint. Since each image's randomness and gradient depend only on its own index,
the resumed run gives the same images as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Callable, Optional

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from ouromamba_jax.gen import objective
from ouromamba_jax.gen import optimize
from ouromamba_jax.io import atomic

METRICS = objective.LOSS_NAMES
# Fields that do not change the generated images (so they may differ on resume).
OPERATIONAL_FIELDS = frozenset({'log_every', 'checkpoint_every', 'keep_checkpoints', 'num_devices',
                                'remat', 'scan_implementation', 'readout_implementation',
                                'grid_columns',
                                'quality_check'})


class NonFiniteError(FloatingPointError):
  """The loss or the pixels stopped being finite."""


@dataclasses.dataclass
class GenResult:
  images: np.ndarray          # (N, H, W, C) float32, normalised input space
  labels: np.ndarray          # (N,) int32 target classes
  history: list[dict]         # per group: {'group', 'indices', 'step', <metric>: [...]}


def _group_path(directory: str, group: int) -> str:
  return os.path.join(directory, 'groups', f'group_{group:04d}.npz')


def _params_digest(params) -> str:
  """SHA-256 of the weights (names, dtypes, bytes): a rerun with another checkpoint of the same
  architecture must not continue a run made with the old one."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]:
    leaf = np.asarray(leaf)
    digest.update(f'{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape}'.encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def _run_description(model, params, gen_cfg, seed: int) -> dict:
  arch = ('num_classes', 'img_size', 'patch_size', 'in_chans', 'd_model', 'depth', 'd_state',
          'expand', 'dt_rank')
  fields = {k: v for k, v in gen_cfg.to_dict().items() if k not in OPERATIONAL_FIELDS}
  model_desc = {k: getattr(model, k) for k in arch}
  model_desc['dtype'] = str(np.dtype(model.dtype))  # the compute dtype changes the images
  desc = {'seed': seed, 'model': model_desc, 'params': _params_digest(params), 'gen': fields}
  return json.loads(json.dumps(desc))


def _check_run_description(directory: str, desc: dict) -> None:
  """Writes run.json on a fresh directory; refuses to resume a run made with other settings."""
  path = os.path.join(directory, 'run.json')
  if os.path.isfile(path):
    with open(path) as f:
      old = json.load(f)
    if old != desc:
      diff = sorted(k for k in set(old['gen']) | set(desc['gen'])
                    if old['gen'].get(k) != desc['gen'].get(k))
      other = [k for k in ('seed', 'model', 'params') if old.get(k) != desc.get(k)]
      raise ValueError(f'{directory} holds a generation run with different settings '
                       f'(differs in: {", ".join(other + ["gen." + k for k in diff])}). '
                       'Use another workdir, or delete that folder to start over.')
    return
  atomic.write_json(path, desc)


def _format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class _Progress:
  """Throughput (image-iterations per second, compile excluded) and ETA for the log line."""

  def __init__(self, total_image_iters: int, done_image_iters: int):
    self.total = total_image_iters
    self.done = done_image_iters
    self.start_time = None
    self.start_done = None

  def restore(self, image_iters: int) -> None:
    """Steps restored from a checkpoint are done: the ETA counts only what is left."""
    self.done += image_iters

  def advance(self, image_iters: int) -> None:
    self.done += image_iters
    if self.start_time is None:  # the first step includes compilation: time from its end
      self.start_time, self.start_done = time.perf_counter(), self.done

  def rate(self) -> float:
    elapsed = time.perf_counter() - self.start_time
    return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

  def eta(self) -> str:
    rate = self.rate()
    return _format_seconds((self.total - self.done) / rate) if rate > 0 else '?'


def generate(model, params, gen_cfg, directory: str, *, seed: int = 0,
             on_step: Optional[Callable[[int], None]] = None) -> GenResult:
  """Synthesises gen_cfg.num_images images for `model` (a VisionMamba) with FP `params`.

  `directory` holds the resumable state (see the module docstring). `on_step(global_step)` is
  called after each step has been checked (tests use it to simulate a kill).
  """
  directory = os.path.abspath(directory)
  spec = objective.LossSpec.from_config(gen_cfg)
  spec.validate(model)
  num_images, iters = int(gen_cfg.num_images), int(gen_cfg.iterations)
  per_step = int(gen_cfg.images_per_step)
  if min(num_images, iters, per_step) < 1:
    raise ValueError(f'gen.num_images ({num_images}), gen.iterations ({iters}) and '
                     f'gen.images_per_step ({per_step}) must be >= 1')
  if int(gen_cfg.checkpoint_every) < 0:
    raise ValueError(f'gen.checkpoint_every must be >= 0 (0 = only finished groups), got '
                     f'{gen_cfg.checkpoint_every}')
  _check_normalisation(gen_cfg, model.in_chans)
  group_size = min(per_step, num_images)
  if num_images % group_size:
    raise ValueError(f'gen.num_images={num_images} is not a multiple of gen.images_per_step='
                     f'{group_size}; pick images_per_step dividing num_images.')
  mesh = optimize.data_mesh(int(gen_cfg.num_devices))
  if group_size % mesh.size:
    raise ValueError(f'gen.images_per_step={group_size} must be a multiple of the {mesh.size} '
                     'devices it is split over (or set gen.num_devices).')
  num_groups = num_images // group_size
  every = int(gen_cfg.checkpoint_every)
  log_every = max(int(gen_cfg.log_every), 1)
  os.makedirs(directory, exist_ok=True)
  _check_run_description(directory, _run_description(model, params, gen_cfg, seed))

  labels_all = optimize.target_labels(num_images, model.num_classes, seed)
  gen_model = objective.generation_model(model, spec, bool(gen_cfg.remat),
                                         gen_cfg.scan_implementation)
  optimizer = optimize.build_optimizer(gen_cfg)
  step_fn = optimize.make_step(gen_model, spec, optimizer, gen_cfg, mesh)
  params = jax.device_put(params, optimize.replicated(mesh))
  shape = (model.img_size, model.img_size, model.in_chans)

  finished = {g: _load_group(directory, g) for g in range(num_groups)
              if os.path.isfile(_group_path(directory, g))}
  progress = _Progress(num_images * iters, len(finished) * group_size * iters)
  manager = ocp.CheckpointManager(
      os.path.join(directory, 'checkpoints'),
      options=ocp.CheckpointManagerOptions(max_to_keep=max(int(gen_cfg.keep_checkpoints), 1),
                                           create=True))
  try:
    for g in range(num_groups):
      if g in finished:
        continue
      indices = np.arange(g * group_size, (g + 1) * group_size)
      finished[g] = _run_group(
          g, num_groups, indices, labels_all[indices], seed=seed, shape=shape, iters=iters,
          every=every, log_every=log_every, gen_cfg=gen_cfg, mesh=mesh, params=params,
          step_fn=step_fn, optimizer=optimizer, manager=manager, directory=directory,
          progress=progress, on_step=on_step)
  finally:
    manager.wait_until_finished()
    manager.close()

  images = np.concatenate([finished[g]['images'] for g in range(num_groups)])
  history = [_history_entry(finished[g]) for g in range(num_groups)]
  return GenResult(images, labels_all, history)


def _check_normalisation(gen_cfg, in_chans: int) -> None:
  """gen.mean/std give the pixel box and the PNG colours: one positive value per channel."""
  mean, std = tuple(gen_cfg.mean), tuple(gen_cfg.std)
  if not len(mean) == len(std) == in_chans or min(std) <= 0:
    raise ValueError(f'gen.mean {mean} and gen.std {std} must hold one value per input channel '
                     f'({in_chans}), std > 0: set them to the normalisation the model was '
                     'trained with.')


def _load_group(directory: str, group: int) -> dict:
  with np.load(_group_path(directory, group)) as data:
    return {k: data[k] for k in data.files}


def _history_entry(group_data: dict) -> dict:
  hist = group_data['history']
  entry = {'group': int(group_data['group']), 'indices': group_data['indices'].tolist(),
           'step': list(range(1, hist.shape[0] + 1))}
  entry.update({name: hist[:, i].tolist() for i, name in enumerate(METRICS)})
  return entry


def _run_group(g, num_groups, indices, labels, *, seed, shape, iters, every, log_every, gen_cfg,
               mesh, params, step_fn, optimizer, manager, directory, progress, on_step) -> dict:
  """Optimises one group to the end (resuming from its checkpoint); writes its group file."""
  n = len(indices)
  keys = jax.device_put(optimize.image_keys(seed, indices), optimize.batch_sharding(mesh))
  labels_dev = jax.device_put(labels, optimize.batch_sharding(mesh))
  images = optimize.initial_images(keys, shape, float(gen_cfg.init_std))
  state = optimize.GroupState(images, optimizer.init(images))
  history = np.full((iters, len(METRICS)), np.nan, np.float32)
  start = 0
  latest = manager.latest_step()
  in_this_group = latest is not None and latest // iters == g
  if in_this_group and latest % iters:
    start = latest % iters
    target = {'state': jax.device_get(state), 'history': history}
    restored = manager.restore(latest, args=ocp.args.StandardRestore(target))
    state = jax.tree.map(np.asarray, restored['state'])
    history = np.asarray(restored['history'], np.float32)
    logging.info('gen: group %d/%d resumes at step %d from %s', g + 1, num_groups, start,
                 manager.directory)
    progress.restore(start * n)
  state = optimize.shard_batch_tree(state, mesh, n)
  last_good = [latest if in_this_group else None]

  def record(t, metrics):
    m = jax.device_get(metrics)
    global_step = g * iters + t + 1
    if not (m['loss_finite'] and m['pixels_finite']):
      what = 'loss' if not m['loss_finite'] else 'pixels (after the Adam update)'
      where = (f'step {last_good[0]} in {manager.directory}' if last_good[0] is not None
               else 'none for this group (it restarts from noise)')
      raise NonFiniteError(
          f'OuroMamba-Gen: non-finite {what} at group {g + 1}/{num_groups}, step {t + 1}/'
          f'{iters} (global step {global_step}); last good checkpoint: {where}. Check the model '
          'weights, or lower gen.lr in a new workdir (this one refuses other settings); a rerun '
          'with the same settings resumes from that checkpoint.')
    history[t] = [m[name] for name in METRICS]
    progress.advance(n)
    if (t + 1) % log_every == 0 or t + 1 == iters:
      logging.info('gen group %d/%d step %d/%d  loss %.4f (L_C %.4f  L_PSE %.4f  L_O %.4f)  '
                   '%.1f img-it/s  ETA %s', g + 1, num_groups, t + 1, iters, m['total'],
                   m['contrastive'], m['pse'], m['output'], progress.rate(), progress.eta())
    if on_step is not None:
      on_step(global_step)

  pending = None
  for t in range(start, iters):
    state, metrics = step_fn(params, state, labels_dev, keys, t)
    if pending is not None:
      record(*pending)  # the previous step's metrics, read while this step runs
    pending = (t, metrics)
    if every and (t + 1) % every == 0 and t + 1 < iters:
      record(*pending)
      pending = None
      host = {'state': jax.device_get(state), 'history': history}
      manager.save(g * iters + t + 1, args=ocp.args.StandardSave(host))
      last_good[0] = g * iters + t + 1
  if pending is not None:
    record(*pending)

  data = {'images': np.asarray(jax.device_get(state.images), np.float32),
          'labels': np.asarray(labels, np.int32), 'indices': indices, 'group': np.int32(g),
          'history': history}
  atomic.write_npz(_group_path(directory, g), **data)
  return data
