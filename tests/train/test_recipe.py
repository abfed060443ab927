"""The training recipe: the loss falls on a fixed batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


@pytest.mark.slow  # ~90 s on 2 busy CPU cores: compiling init and the step of a 4-stage model
def test_batch_norm_model_trains_on_batch_statistics():
  """MambaVision's BatchNorms normalize by the batch while training; their running statistics
  (params) follow the batch by torch's momentum, and the eval model reads them."""
  spec = TrainSpec(epochs=1, batch_size=4, compute_dtype='float32')
  model = build_model('mambavision_t_cifar10', dim=4, in_dim=4, depths=(1, 1, 1, 1),
                      num_heads=(1, 1, 1, 1), scan_implementation='sequential')
  params = checkpoints.random_params(model)
  optimizer, _ = recipe.make_optimizer(spec, steps_per_epoch=10)
  step = recipe.make_train_step(model, optimizer, spec, cifar10.MEAN, cifar10.STD)
  state = {'params': params, 'opt_state': optimizer.init(params), 'step': jnp.zeros((), jnp.int32)}
  images = jnp.asarray(np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), np.uint8))
  state, metrics = step(state, images, jnp.arange(4) % 10, jnp.arange(4), jax.random.key(0))
  assert np.isfinite(float(metrics['loss']))
  running = state['params']['patch_embed']['conv_down_1']['running_mean']
  assert float(jnp.abs(running).max()) > 0                    # moved from its zero init
  np.testing.assert_allclose(state['params']['norm']['running_var'].mean(), 1.0, atol=0.5)
  assert model.apply({'params': state['params']}, jnp.zeros((1, 32, 32, 3))).shape == (1, 10)
