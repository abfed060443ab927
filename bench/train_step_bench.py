"""Training-step throughput of a Vim on CIFAR-sized inputs (images/s, epoch time, peak memory).

  PYTHONPATH=. python bench/train_step_bench.py --batch_sizes=256,512 --steps=30

Times the jitted step of `ouromamba_jax.train.recipe` that the `train` stage runs (augmentation
included), after a warm-up that absorbs compilation, with random uint8 images on the device.
"""
from __future__ import annotations

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from ouromamba_jax import checkpoints
from ouromamba_jax.data import cifar10
from ouromamba_jax.stages import sections
from ouromamba_jax.train import recipe
from ouromamba_jax.train.spec import TrainSpec

_MODEL = flags.DEFINE_string('model', 'vim_t_cifar10', 'registered model variant')
_BATCHES = flags.DEFINE_list('batch_sizes', ['256'], 'batch sizes to time')
_STEPS = flags.DEFINE_integer('steps', 30, 'timed steps per batch size')
_DTYPE = flags.DEFINE_string('dtype', 'bfloat16', 'compute dtype')
_SCAN = flags.DEFINE_string('scan', '', 'scan implementation ("" = platform default)')
_OUT = flags.DEFINE_string('out', '', 'write results as JSON here')


def time_batch(batch: int) -> dict:
  model_cfg = common.model_config(_MODEL.value)
  model_cfg.scan_implementation = _SCAN.value
  tcfg = TrainSpec()
  model = sections.model_from_config(model_cfg, dtype=checkpoints.DTYPES[_DTYPE.value])
  params = checkpoints.random_params(model)
  optimizer, _ = recipe.make_optimizer(tcfg, steps_per_epoch=100)
  state = {'params': params, 'opt_state': optimizer.init(params), 'step': jnp.zeros((), jnp.int32)}
  step = recipe.make_train_step(model, optimizer, tcfg, cifar10.MEAN, cifar10.STD)
  n = 4 * batch
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.integers(0, 256, (n, model.img_size, model.img_size, 3), np.uint8))
  labels = jax.device_put(rng.integers(0, 10, (n,), np.int32))
  idx = [jnp.asarray(rng.permutation(n)[:batch]) for _ in range(4)]
  t0 = time.perf_counter()
  state, m = step(state, images, labels, idx[0], jax.random.key(0))
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  for i in range(3):
    state, m = step(state, images, labels, idx[i % 4], jax.random.key(i))
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for i in range(_STEPS.value):
    state, m = step(state, images, labels, idx[i % 4], jax.random.key(i))
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t0) / _STEPS.value
  stats = jax.devices()[0].memory_stats() or {}
  return {'model': _MODEL.value, 'batch': batch, 'dtype': _DTYPE.value,
          'step_ms': dt * 1e3, 'images_per_s': batch / dt,
          'epoch_s_50k': 50000 / batch * dt, 'compile_s': compile_s,
          'peak_bytes': stats.get('peak_bytes_in_use'), 'device': str(jax.devices()[0])}


def main(argv):
  del argv
  results = [time_batch(int(b)) for b in _BATCHES.value]
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(results, f, indent=2)
  print(f"{'batch':>6} {'step ms':>9} {'img/s':>9} {'epoch s':>8} {'compile s':>9}")
  for r in results:
    print(f"{r['batch']:>6} {r['step_ms']:>9.1f} {r['images_per_s']:>9.0f} "
          f"{r['epoch_s_50k']:>8.1f} {r['compile_s']:>9.1f}")


if __name__ == '__main__':
  app.run(main)
