"""Mode `generate` end to end on a tiny random model, its config door, and the quality check."""
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from configs import common
from ouromamba_jax.data import cifar10
from ouromamba_jax.data import normalization
from ouromamba_jax.gen import quality
from ouromamba_jax.stages import gen_outputs as outputs
from ouromamba_jax.stages import generate as gen_run
from ouromamba_jax.stages import sections
from tests.gen.conftest import IMAGENET_MEAN, IMAGENET_STD
from tests.gen.conftest import tiny  # pylint: disable=unused-import
from tests import random_init


def _config():
  c = common.base_config()
  c.mode = 'generate'
  c.model = common.model_config('vim_t', img_size=32, patch_size=8, depth=2, d_model=32,
                                num_classes=10)
  c.data = common.data_config('cifar10')
  c.gen = common.gen_config()
  c.gen.update(dict(num_images=4, images_per_step=4, iterations=3, grid_columns=2,
                    num_positives=4, log_every=2, checkpoint_every=2, warmup_fraction=0.0,
                    lr=0.1))
  return c


def _generator_as_judge(config):
  """bundled_judge's stand-in: the run's own random generator under a judge's name (no
  testbed forward to compile), so its scores must repeat the base report's."""
  model, params = sections.load_model(config.model, seed=config.seed)
  return lambda name, size, classes: quality.Judge(name, model, params, cifar10.MEAN,
                                                   cifar10.STD)


def test_generate_mode_writes_the_synthetic_set(tmp_path, monkeypatch):
  config = _config()
  config.gen.judges = 'vmamba_t_cifar10'
  monkeypatch.setattr(quality, 'bundled_judge', _generator_as_judge(config))
  result = gen_run.run(config, str(tmp_path))
  directory = outputs.gen_dir(str(tmp_path))

  images, labels = outputs.load_synthetic(outputs.synthetic_path(str(tmp_path)))
  np.testing.assert_array_equal(images, result.images)
  np.testing.assert_array_equal(labels, result.labels)
  with np.load(outputs.synthetic_path(str(tmp_path))) as data:
    np.testing.assert_allclose(data['mean'], (0.4914, 0.4822, 0.4465))  # the dataset's

  grid = Image.open(os.path.join(directory, outputs.GRID_FILE))
  assert grid.mode == 'RGB' and grid.size[0] > 2 * 64 and grid.size[1] > 2 * 64

  with open(os.path.join(directory, outputs.LOSSES_FILE)) as f:
    curves = json.load(f)
  assert curves['metrics'] == ['total', 'contrastive', 'pse', 'output']
  assert len(curves['groups']) == 1 and len(curves['groups'][0]['total']) == 3
  assert Image.open(os.path.join(directory, outputs.LOSSES_PNG)).size[1] >= 2 * 150  # 4 panels

  with open(os.path.join(directory, outputs.QUALITY_FILE)) as f:
    report = json.load(f)
  own = {'synthetic_top1_agreement', 'synthetic_mean_target_prob', 'noise_top1_agreement',
         'noise_mean_target_prob'}
  assert set(report) == own | {f'judge/vmamba_t_cifar10/{k}' for k in own}
  assert all(report[f'judge/vmamba_t_cifar10/{k}'] == report[k] for k in own)
  assert all(0.0 <= v <= 1.0 for v in report.values())
  assert not [n for n in os.listdir(directory) if '.tmp-' in n]  # atomic writes left no tmp


def test_normalisation_other_than_the_datasets_is_refused(tmp_path):
  """ImageNet's normalisation on a CIFAR-10 model would clip to the wrong pixel box."""
  config = _config()
  config.gen.mean, config.gen.std = IMAGENET_MEAN, IMAGENET_STD
  with pytest.raises(ValueError, match=r'differ from the cifar10 normalisation'):
    gen_run.run(config, str(tmp_path))
  assert not os.path.exists(outputs.gen_dir(str(tmp_path)))
  assert gen_run.class_names(_config())[:2] == ('airplane', 'automobile')  # the grid's labels


def test_a_judge_of_other_classes_fails_before_gen(tmp_path):
  config = _config()
  config.model.overrides.num_classes = 7
  config.gen.judges = 'vim_t_cifar10'
  with pytest.raises(ValueError, match=r'vim_t_cifar10 takes 32x32 images with 10 classes, the '
                                       r'generator 32x32 with 7'):
    gen_run.run(config, str(tmp_path))
  assert not os.path.exists(outputs.gen_dir(str(tmp_path)))


def test_quality_report_measures_agreement_with_the_targets(tiny):
  model, params = tiny
  images = np.asarray(random_init.normal(0, (6, 32, 32, 3)))
  predicted = quality.predict(model, params, images, batch_size=4).argmax(-1)
  report = dict(quality.quality_report(model, params, images, predicted))
  assert report['synthetic_top1_agreement'] == 1.0
  wrong = dict(quality.quality_report(model, params, images, (predicted + 1) % 10))
  assert wrong['synthetic_top1_agreement'] == 0.0
  assert 0.0 <= report['noise_top1_agreement'] <= 1.0


def test_denormalize_and_grid_labels():
  mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  pixels = normalization.denormalize(np.array([[[[-2.0, 0.0, 2.0]]]]), mean, std)
  np.testing.assert_array_equal(pixels, [[[[0, 128, 255]]]])
  grid = outputs.label_grid(np.zeros((3, 8, 8, 3), np.uint8), np.array([0, 1, 2]),
                            ('cat', 'dog'), columns=2)
  assert grid.size == (2 * (64 + 2) + 2, 2 * (64 + 12 + 2) + 2)


def test_misspelled_gen_field_is_one_line_with_a_suggestion(tmp_path):
  config = _config()
  with config.gen.unlocked():
    config.gen.num_image = 3
  with pytest.raises(ValueError, match=r'unknown config field gen.num_image; did you mean '
                                       r'gen.num_images\?'):
    gen_run.run(config, str(tmp_path))
