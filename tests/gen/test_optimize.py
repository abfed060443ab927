"""Targets, initial noise, augmentation, schedule and the jitted step."""
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax.gen import objective
from ouromamba_jax.gen import optimize
from tests.gen.conftest import tiny_gen_spec


def test_target_labels_are_balanced_and_seeded():
  labels = optimize.target_labels(25, 10, seed=3)
  counts = np.bincount(labels, minlength=10)
  assert labels.shape == (25,) and counts.max() - counts.min() <= 1
  np.testing.assert_array_equal(labels, optimize.target_labels(25, 10, seed=3))
  assert not np.array_equal(labels, optimize.target_labels(25, 10, seed=4))
  assert len(set(optimize.target_labels(128, 1000, seed=0))) == 128  # all distinct classes


def test_initial_noise_depends_only_on_the_image_index():
  all_keys = optimize.image_keys(0, np.arange(6))
  part_keys = optimize.image_keys(0, np.arange(2, 4))
  full = optimize.initial_images(all_keys, (4, 4, 3), 1.0)
  np.testing.assert_array_equal(full[2:4], optimize.initial_images(part_keys, (4, 4, 3), 1.0))
  assert abs(float(jnp.std(full)) - 1.0) < 0.2
  other_seed = optimize.initial_images(optimize.image_keys(1, np.arange(6)), (4, 4, 3), 1.0)
  assert not np.allclose(full, other_seed)


def test_augment_rolls_and_flips_per_image():
  images = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
  keys = optimize.image_keys(0, np.arange(2))
  assert optimize.augment(images, keys, 0, False) is images
  out = np.asarray(optimize.augment(images, keys, 2, True))
  for i in range(2):  # every output is a roll (and maybe a flip) of its own input
    candidates = [np.roll(np.asarray(images[i]), (dy, dx), axis=(0, 1))
                  for dy in range(-2, 3) for dx in range(-2, 3)]
    candidates += [c[:, ::-1] for c in candidates]
    assert any(np.array_equal(out[i], c) for c in candidates)


def test_schedule_warms_up_then_decays():
  cfg = tiny_gen_spec(iterations=20, warmup_fraction=0.25, lr=0.4)
  lr = optimize.learning_rate_schedule(cfg)
  assert 0 < lr(0) < lr(4) and float(lr(5)) == pytest.approx(0.4) and lr(19) < 0.05


@pytest.mark.parametrize('change,message', [
    (dict(schedule='step'), r"gen.schedule must be one of \('cosine', 'constant'\), got 'step'"),
    (dict(warmup_fraction=-0.1), r'gen.warmup_fraction must be in \[0, 1\], got -0.1'),
    (dict(lr=-0.1, schedule='constant'), r'gen.lr must be > 0, got -0.1'),
    (dict(jitter=-2), r'gen.jitter must be >= 0 pixels \(0 = off\), got -2'),
])
def test_bad_pixel_settings_are_clear_errors(change, message):
  with pytest.raises(ValueError, match=message):
    optimize.check_settings(tiny_gen_spec(**change))
  optimize.check_settings(tiny_gen_spec(warmup_fraction=-0.1, schedule='constant'))  # unread


def test_bad_device_count_and_jitter_are_clear_errors():
  with pytest.raises(ValueError, match='num_devices must be >= 0'):
    optimize.data_mesh(-1)
  with pytest.raises(ValueError, match='only 1 local devices exist'):
    optimize.data_mesh(2)
  with pytest.raises(ValueError, match='jitter must be >= 0'):   # a step built on its own
    optimize.make_step(None, tiny_gen_spec(jitter=-2), None)


def test_step_keeps_pixels_in_the_image_box_and_reports_finiteness(tiny):
  model, params = tiny
  cfg = tiny_gen_spec(lr=5.0, schedule='constant')
  spec = cfg
  optimizer = optimize.build_optimizer(cfg)
  step = optimize.make_step(objective.generation_model(model, spec), spec, optimizer)
  keys = optimize.image_keys(0, np.arange(2))
  images = optimize.initial_images(keys, (32, 32, 3), 1.0)
  state, metrics = step(params, optimize.GroupState(images, optimizer.init(images)),
                        jnp.array([1, 2]), keys, 0)
  lo, hi = optimize.pixel_bounds(cfg.mean, cfg.std)
  assert np.all(np.asarray(state.images) >= lo - 1e-6) and np.all(
      np.asarray(state.images) <= hi + 1e-6)
  assert bool(metrics['loss_finite']) and bool(metrics['pixels_finite'])
  assert set(objective.LOSS_NAMES) <= set(metrics)
