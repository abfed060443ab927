"""Mode `train`: supervised training of a testbed (the recipe of `train.recipe`) with exact resume.

config.train becomes a `TrainSpec` at the door. Orbax checkpoints in
WORKDIR/train_checkpoints, each with a manifest of per-array checksums in
WORKDIR/train_checkpoints.manifests (`io.step_manifests`); a rerun continues the same run bit
for bit from the newest intact checkpoint (a damaged one is named in the log and skipped); a
SIGTERM checkpoints the step reached and stops (`stop_request`).
Outputs: params.npz, model.safetensors (the official names of the model's family, bf16),
train_log.jsonl, train_result.json.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ouromamba_jax import checkpoints
from ouromamba_jax import data as data_lib
from ouromamba_jax import stop_request
from ouromamba_jax.io import atomic
from ouromamba_jax.io import integrity
from ouromamba_jax.io import step_manifests
from ouromamba_jax.stages import evaluate as evaluate_stage
from ouromamba_jax.stages import sections
from ouromamba_jax.train import recipe
from ouromamba_jax.train.spec import TrainSpec

def _checkpoint_manager(directory: str, keep: int):
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _save(manager, manifests: step_manifests.StepManifests, step: int, state, **kwargs) -> None:
  """The step's manifest first, then the step: every finished step has its manifest."""
  manifests.record(step, state)
  manager.save(step, args=ocp.args.StandardSave(state), **kwargs)
  manifests.prune(set(manager.all_steps()) | {step})


def _append_jsonl(path: str, record: dict[str, Any]) -> None:
  with open(path, 'a') as f:
    f.write(json.dumps(record) + '\n')


def save_params_npz(params, path: str) -> None:
  """Flat `a/b/c -> fp32 array` npz, written atomically (the hand-off to export/import); NaN/Inf
  params (a diverged run) are refused before anything is written."""
  flat = {'/'.join(str(getattr(k, 'key', k)) for k in keypath): np.asarray(v, np.float32)
          for keypath, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  integrity.check_finite(flat.items(), path, 'refusing to save it: training diverged; lower '
                         'train.learning_rate and train again in a new workdir.')
  atomic.write_npz(path, **flat)


def train(config, workdir: str) -> dict[str, Any]:
  """Trains until config.train.epochs or config.train.max_seconds; returns final metrics. A
  SIGTERM saves the step reached and raises StopRequested (`stop_request`)."""
  with stop_request.on_sigterm():
    return _train(config, workdir)


def _train(config, workdir: str) -> dict[str, Any]:
  tcfg = sections.spec_from_section(TrainSpec, sections.section(config, 'train',
                                                                'common.train_config()'), 'train')
  dataset = data_lib.dataset_module(config.data.name)
  if not hasattr(dataset, 'load'):
    raise ValueError(f'mode train keeps whole splits in device memory, which dataset '
                     f'{config.data.name!r} does not offer; train on cifar10 (or add a `load` '
                     f'returning uint8 images + labels to {dataset.__name__}).')
  train_split = dataset.load('train', config.data.data_dir, config.data.cache_dir,
                             config.data.use_tfds)
  if tcfg.train_images:  # a fixed, seeded subset (the split is sorted by class)
    keep = np.sort(np.random.default_rng(config.seed).permutation(
        len(train_split.labels))[:tcfg.train_images])
    train_split = dataset.Split(train_split.images[keep], train_split.labels[keep])
  n_train = len(train_split.labels)
  batch = tcfg.batch_size
  steps_per_epoch = n_train // batch
  if steps_per_epoch < 1:
    raise ValueError(f'train.batch_size={batch} exceeds the {n_train} training images')
  total_steps = tcfg.epochs * steps_per_epoch

  model = sections.model_from_config(config.model, dtype=checkpoints.DTYPES[tcfg.compute_dtype])
  eval_model = sections.model_from_config(config.model)
  if config.model.checkpoint:  # fine-tuning
    _, params = sections.load_model(config.model)
  else:
    params = checkpoints.random_params(model, config.seed)
  optimizer, schedule = recipe.make_optimizer(tcfg, steps_per_epoch)
  state = {'params': params, 'opt_state': optimizer.init(params),
           'step': jnp.zeros((), jnp.int32)}

  checkpoint_dir = os.path.join(workdir, 'train_checkpoints')
  manager = _checkpoint_manager(checkpoint_dir, tcfg.keep_checkpoints)
  manifests = step_manifests.StepManifests(checkpoint_dir)
  target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
  restored = step_manifests.restore_intact(
      manager, manifests,
      lambda step: manager.restore(step, args=ocp.args.StandardRestore(target)), logging.warning)
  if restored is not None:
    state = restored[1]
    logging.info('resumed from step %d', int(state['step']))

  mean, std = dataset.MEAN, dataset.STD
  train_step = recipe.make_train_step(model, optimizer, tcfg, mean, std)
  test_source = dataset.eval_source(config.data, eval_model.img_size)  # config.data.eval_images

  def test_top1(params) -> float:
    return evaluate_stage.evaluate_data(eval_model, params, config.data, source=test_source)['top1']

  all_images = jax.device_put(train_split.images)
  all_labels = jax.device_put(train_split.labels)
  log_path = os.path.join(workdir, 'train_log.jsonl')

  start_step = int(state['step'])
  t0 = time.time()
  step = start_step
  metrics = {}
  stopped_early = False
  perm_epoch, perm = -1, None
  while step < total_steps:
    epoch, pos = divmod(step, steps_per_epoch)
    if epoch != perm_epoch:
      perm_epoch, perm = epoch, recipe.epoch_permutation(config.seed, epoch, n_train)
    batch_index = jnp.asarray(perm[pos * batch:(pos + 1) * batch])
    key = jax.random.fold_in(jax.random.key(config.seed), step)
    state, metrics = train_step(state, all_images, all_labels, batch_index, key)
    step += 1
    now = time.time()
    if step % tcfg.log_every_steps == 0 or step == total_steps:
      m = {k: float(v) for k, v in metrics.items()}
      rate = (step - start_step) / max(now - t0, 1e-9)
      eta = (total_steps - step) / max(rate, 1e-9)
      logging.info('step %d/%d epoch %.2f loss %.4f acc %.3f lr %.2e | %.1f steps/s, ETA %.0fs',
                   step, total_steps, step / steps_per_epoch, m['loss'], m['accuracy'],
                   float(schedule(step)), rate, eta)
      _append_jsonl(log_path, {'step': step, **m, 'lr': float(schedule(step)),
                               'elapsed_s': now - t0})
    end_of_epoch = step % steps_per_epoch == 0
    if end_of_epoch and ((step // steps_per_epoch) % tcfg.eval_every_epochs == 0
                         or step == total_steps):
      acc = test_top1(state['params'])
      logging.info('epoch %d test top-1 %.4f', step // steps_per_epoch, acc)
      _append_jsonl(log_path, {'step': step, 'epoch': step // steps_per_epoch, 'test_top1': acc})
    if step % tcfg.checkpoint_every_steps == 0 or end_of_epoch:
      _save(manager, manifests, step, state)
    if tcfg.max_seconds and time.time() - t0 > tcfg.max_seconds:
      stopped_early = step < total_steps
      break
    if stop_request.requested():
      break
  if manager.latest_step() != step:
    _save(manager, manifests, step, state, force=True)
  manager.wait_until_finished()
  if stop_request.requested():
    raise stop_request.StopRequested(
        f'training stopped by SIGTERM at step {step}/{total_steps}; the checkpoint is in '
        f'{os.path.join(workdir, "train_checkpoints")}; rerun the same command to resume.')
  result = {'step': step, 'total_steps': total_steps, 'finished': not stopped_early,
            'elapsed_s': time.time() - t0}
  if not stopped_early:
    result['test_top1'] = test_top1(state['params'])
  save_params_npz(state['params'], os.path.join(workdir, 'params.npz'))
  # The shippable form: official names, bf16 storage (half the bytes; compute stays fp32).
  checkpoints.save_checkpoint(state['params'], os.path.join(workdir, 'model.safetensors'),
                              jnp.bfloat16, model=eval_model)
  logging.info('train result: %s', result)
  atomic.write_json(os.path.join(workdir, 'train_result.json'), result)
  return result


def run(config, workdir: str) -> None:
  train(config, workdir)
