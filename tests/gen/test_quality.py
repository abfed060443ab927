"""Gen's judged quality check: other models score the same images and noise."""
import numpy as np
import pytest

from ouromamba_jax.data import cifar10
from ouromamba_jax.data import normalization
from ouromamba_jax.gen import quality
from ouromamba_jax.gen.spec import GenSpec
from tests.gen.conftest import IMAGENET_MEAN, IMAGENET_STD
from tests.gen.conftest import tiny  # pylint: disable=unused-import
from tests.gen.conftest import tiny_model
from tests.random_init import normal

CIFAR_MEAN, CIFAR_STD = cifar10.MEAN, cifar10.STD


def test_the_generator_as_its_own_judge_repeats_its_report(tiny):
  """Same model, same normalisation: the judge's scores are the base report's, same noise."""
  model, params = tiny
  images, labels = normal(0, (4, 32, 32, 3)), np.array([0, 3, 3, 9])
  base = dict(quality.quality_report(model, params, images, labels, seed=1))
  judge = quality.Judge('self', model, params, CIFAR_MEAN, CIFAR_STD)
  judged = dict(quality.judged_report([judge], images, labels, CIFAR_MEAN, CIFAR_STD, 10, seed=1))
  assert judged == {f'judge/self/{k}': v for k, v in base.items()}


def test_a_judge_sees_the_same_pixels_in_its_own_normalisation():
  images = normal(1, (2, 4, 4, 3))
  same = quality.Judge('same', None, None, CIFAR_MEAN, CIFAR_STD)
  assert quality.in_judge_space(images, CIFAR_MEAN, CIFAR_STD, same) is images
  other = quality.Judge('other', None, None, IMAGENET_MEAN, IMAGENET_STD)
  moved = quality.in_judge_space(images, CIFAR_MEAN, CIFAR_STD, other)
  assert not np.allclose(moved, images)
  np.testing.assert_array_equal(normalization.denormalize(moved, IMAGENET_MEAN, IMAGENET_STD),
                                normalization.denormalize(images, CIFAR_MEAN, CIFAR_STD))


def test_a_judge_of_other_size_or_classes_is_one_error_naming_both():
  with pytest.raises(ValueError, match=r'gen.judges: j takes 32x32 images with 7 classes, the '
                                       r'generator 32x32 with 10'):
    quality.check_judge('j', tiny_model(num_classes=7), 32, 10)
  with pytest.raises(ValueError, match=r'vim_t_cifar10 takes 32x32 images with 10 classes, the '
                                       r'generator 224x224 with 1000'):
    quality.bundled_judge('vim_t_cifar10', 224, 1000)
  with pytest.raises(ValueError, match=r"'vim_t' is not a bundled model"):
    quality.bundled_judge('vim_t', 224, 1000)


def test_judges_are_named_in_the_spec_and_need_the_quality_check():
  spec = GenSpec(judges=' vim_t_cifar10,, mambavision_t_cifar10 ')
  assert spec.judge_names == ('vim_t_cifar10', 'mambavision_t_cifar10')
  assert GenSpec().judge_names == ()
  assert 'judges' not in spec.defining_fields()          # scoring does not change the images
  with pytest.raises(ValueError, match=r'gen.quality_check=False'):
    GenSpec(judges='vim_t_cifar10', quality_check=False)
