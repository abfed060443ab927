"""evaluate: top-1/top-5 against a hand computation on a tiny random model (arrays and sources)."""
import os

import jax
import numpy as np
import pytest

from configs import common
from ouromamba_jax import data as data_lib
from ouromamba_jax import evaluation
from ouromamba_jax.data import imagenet
from ouromamba_jax.data import normalization
from ouromamba_jax.data import pipeline
from ouromamba_jax.models import build_model
from tests.data import synthetic

N = 12
TINY = dict(img_size=32, patch_size=8, depth=1, d_model=16, num_classes=10)


@pytest.fixture(scope='module')
def tiny():
  model = build_model('vim_t', **TINY)
  params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))['params']
  return model, params


def _logits(model, params, files):
  x = np.stack([imagenet.load_image(f, 32) for f in files]).astype(np.float32) / 255.0
  x = (x - np.asarray(imagenet.MEAN, np.float32)) / np.asarray(imagenet.STD, np.float32)
  return np.asarray(jax.jit(model.apply)({'params': params}, x))


def _data_cfg(data_dir, **kw):
  cfg = common.data_config('imagenet')
  cfg.update(dict(data_dir=str(data_dir), use_tfds=False, eval_batch_size=5, **kw))
  return cfg


@pytest.fixture(scope='module')
def dataset(tiny, tmp_path_factory):
  """Labels chosen from the model's own logits: 4 top-1 hits, 3 top-5-only hits, 5 misses."""
  root = tmp_path_factory.mktemp('val')
  files = synthetic.labels_folder(str(root), [0] * N)
  order = np.argsort(-_logits(*tiny, files), axis=-1)
  labels = [order[i, 0] for i in range(4)] + [order[i, 2 + i % 3] for i in range(4, 7)] + [
      order[i, -1] for i in range(7, N)]
  with open(root / 'dataset.txt', 'w') as f:
    f.writelines(f'./data/{os.path.basename(p)}, {l}\n' for p, l in zip(files, labels))
  return root, files, np.asarray(labels)


def _source(data_dir):
  return data_lib.eval_source(_data_cfg(data_dir), 32)


def _hand(model, params, files, labels):
  order = np.argsort(-_logits(model, params, files), axis=-1)
  return np.mean(order[:, 0] == labels), np.mean((order[:, :5] == labels[:, None]).any(-1))


def test_top1_top5_match_hand_computation(tiny, dataset):
  root, files, labels = dataset
  lines = []
  result = evaluation.evaluate_source(*tiny, _source(root), batch_size=5, log=lines.append)
  assert result['top1'] == pytest.approx(4 / N) and result['top5'] == pytest.approx(7 / N)
  assert (result['top1'], result['top5']) == pytest.approx(_hand(*tiny, files, labels))
  assert result['images'] == N and result['images_per_s'] > 0 and result['seconds'] > 0
  assert any('images/s' in l and 'ETA' in l for l in lines)
  assert dict(evaluation.evaluator(*tiny, _source(root), log=lambda _: None)).keys() == result.keys()


def test_eval_images_slice(tiny, dataset):
  root, files, labels = dataset
  result = evaluation.evaluate_source(*tiny, _source(root), eval_images=5, log=lambda _: None)
  keep = pipeline.subset_indices(N, 5)
  assert result['images'] == 5
  assert (result['top1'], result['top5']) == pytest.approx(
      _hand(*tiny, [files[i] for i in keep], labels[keep]))


def test_label_and_class_count_mismatch(tiny, tmp_path):
  synthetic.labels_folder(str(tmp_path / 'a'), [3, 10])
  with pytest.raises(ValueError, match=r'labels span 3..10 but the model has 10 classes'):
    evaluation.evaluate_source(*tiny, _source(tmp_path / 'a'))
  synthetic.class_folders(str(tmp_path / 'b'), {'n1': 1, 'n2': 1})
  with pytest.raises(ValueError, match=r'has 2 classes but the model has 10.*labels file'):
    evaluation.evaluate_source(*tiny, _source(tmp_path / 'b'))


@pytest.mark.parametrize('bad_label', [-1, 10])
def test_arrays_with_labels_outside_the_classes_are_refused(tiny, bad_label):
  images, labels = np.zeros((2, 32, 32, 3), np.float32), np.array([0, bad_label])
  with pytest.raises(ValueError, match=rf'^evaluate: labels span {min(0, bad_label)}\.\.'
                                       rf'{max(0, bad_label)} but the model has 10 classes'):
    evaluation.evaluate(*tiny, images, labels)


def test_arrays_give_the_source_result(tiny, dataset):
  root, files, labels = dataset
  x = np.stack([imagenet.load_image(f, 32) for f in files])
  images = np.asarray(normalization.normalize(x, imagenet.MEAN, imagenet.STD))
  result = evaluation.evaluate(*tiny, images, labels, batch_size=5)
  assert result == {'top1': pytest.approx(4 / N), 'top5': pytest.approx(7 / N), 'images': N}


def test_both_paths_run_the_tree_laid_out_for_their_per_device_batch(tiny, dataset, monkeypatch):
  """evaluate and evaluate_source hand the model the tree `prepared_for_inference` lays out
  for the batch one device runs (on a GPU below 64 samples: Vim's directions stacked once)."""
  root, files, labels = dataset
  seen = []
  prepare = evaluation.prepared_for_inference
  monkeypatch.setattr(evaluation, 'prepared_for_inference',
                      lambda model, params, batch: seen.append(batch) or prepare(model, params,
                                                                                 batch))
  images = np.zeros((N, 32, 32, 3), np.float32)
  evaluation.evaluate(*tiny, images, labels, batch_size=5)
  evaluation.evaluate_source(*tiny, _source(root), batch_size=4)
  assert seen == [5, 4]
