"""Evaluation subsets and the threaded batch iterator."""
import numpy as np
import pytest

from ouromamba_jax.data import pipeline


def _source(n, fail_at=None):
  def load(i):
    if i == fail_at:
      raise ValueError(f'bad image {i}')
    return np.full((2, 2, 3), i, np.uint8)
  return pipeline.EvalSource('fake', np.arange(n, dtype=np.int32) % 3, load, 2, (0.5,) * 3,
                             (0.5,) * 3)


def test_subset_indices():
  np.testing.assert_array_equal(pipeline.subset_indices(5, 0), np.arange(5))
  np.testing.assert_array_equal(pipeline.subset_indices(5, 9), np.arange(5))
  a = pipeline.subset_indices(1000, 50)
  assert len(a) == 50 and len(set(a)) == 50 and (np.diff(a) > 0).all()
  np.testing.assert_array_equal(a, pipeline.subset_indices(1000, 50))  # fixed seed
  assert a.max() > 500                                                  # not just the first files
  with pytest.raises(ValueError, match='eval_images must be >= 0'):
    pipeline.subset_indices(5, -1)


def test_batches_order_padding_and_errors():
  indices = np.array([4, 0, 7, 2, 9])
  out = list(pipeline.batches(_source(10), indices, 2, threads=3))
  assert [b.valid for b in out] == [2, 2, 1]
  np.testing.assert_array_equal(np.concatenate([b.images[:, 0, 0, 0] for b in out]),
                                [4, 0, 7, 2, 9, 0])
  np.testing.assert_array_equal(np.concatenate([b.labels for b in out]), [1, 0, 1, 2, 0, -1])
  with pytest.raises(ValueError, match='bad image 7'):
    list(pipeline.batches(_source(10, fail_at=7), indices, 2))
  with pytest.raises(ValueError, match='eval_batch_size must be >= 1'):
    list(pipeline.batches(_source(10), indices, 0))


def test_registry_by_name():
  from ouromamba_jax import data  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  assert sorted(data.DATASETS) == ['cifar10', 'imagenet']
  with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*--config.data.name"):
    data.eval_source(common.data_config('mnist'), 32)
  with pytest.raises(ValueError, match=r'CIFAR-10 images are 32x32 but the model expects 224'):
    data.eval_source(common.data_config('cifar10'), 224)
