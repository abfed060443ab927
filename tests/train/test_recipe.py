"""The training recipe: the loss falls on a fixed batch."""
import jax
import jax.numpy as jnp
import numpy as np

from ouromamba_jax import checkpoints
from ouromamba_jax.data import cifar10
from ouromamba_jax.models import build_model
from ouromamba_jax.train import recipe
from ouromamba_jax.train.spec import TrainSpec


def test_loss_decreases_on_a_fixed_batch():
  spec = TrainSpec(epochs=2, batch_size=8, learning_rate=3e-3, warmup_epochs=0.2,
                   compute_dtype='float32')
  model = build_model('vim_t_cifar10', d_model=16, depth=1, patch_size=8,
                      scan_implementation='sequential')
  params = checkpoints.random_params(model)
  optimizer, _ = recipe.make_optimizer(spec, steps_per_epoch=10)
  step = recipe.make_train_step(model, optimizer, spec, cifar10.MEAN, cifar10.STD)
  state = {'params': params, 'opt_state': optimizer.init(params), 'step': jnp.zeros((), jnp.int32)}
  rng = np.random.default_rng(1)
  images = jnp.asarray(rng.integers(0, 256, (8, 32, 32, 3), np.uint8))
  labels = jnp.asarray(np.arange(8) % 10, jnp.int32)
  index = jnp.arange(8)
  losses = []
  for i in range(30):
    state, metrics = step(state, images, labels, index, jax.random.key(0))
    losses.append(float(metrics['loss']))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses
