"""ImageNet-format data: layouts, preprocessing, bad input, the real 300-image sample."""
import os
import pathlib
import tarfile

import numpy as np
from PIL import Image
import pytest

from ouromamba_jax.data import imagenet
from ouromamba_jax.data import pipeline
from tests.data import synthetic

SHARED = pathlib.Path(__file__).resolve().parents[2] / '..' / 'shared' / 'data'
VAL_300 = SHARED / 'imagenet_val_300' / 'imagenet_val_300.tar.gz'


def _find(path, tmp_path, use_tfds=False):
  return imagenet.find(str(path), str(tmp_path / 'cache'), use_tfds)


def test_labels_file_layout(tmp_path):
  root = tmp_path / 'val'
  files = synthetic.labels_folder(str(root), [3, 1, 4, 1, 5])
  listing = _find(root, tmp_path)
  assert listing.files == files
  np.testing.assert_array_equal(listing.labels, [3, 1, 4, 1, 5])
  assert listing.num_classes is None
  # the file itself works as data_dir too, and `FILE LABEL` lines parse like `FILE, LABEL`
  (root / 'val.txt').write_text('./data/img_001.png 7\n\n# comment\n')
  assert _find(root / 'val.txt', tmp_path).labels.tolist() == [7]


def test_labels_file_errors(tmp_path):
  synthetic.labels_folder(str(tmp_path), [0, 1])
  (tmp_path / 'dataset.txt').write_text('./data/img_000.png, 0\n./data/img_001.png, cat\n')
  with pytest.raises(ValueError, match=r'dataset.txt:2: label .cat. is not an integer'):
    _find(tmp_path, tmp_path)
  (tmp_path / 'dataset.txt').write_text('./data/img_000.png, 0\n./data/gone.png, 1\n')
  with pytest.raises(imagenet.DataNotFoundError, match=r'1 files that do not exist: .*gone.png'):
    _find(tmp_path, tmp_path)
  (tmp_path / 'dataset.txt').write_text('./data/notes.txt, 0\n')
  with pytest.raises(imagenet.BadImageError, match=r'dataset.txt:1: .*notes.txt. is not an image'):
    _find(tmp_path, tmp_path)


def test_class_folder_layout(tmp_path):
  synthetic.class_folders(str(tmp_path / 'val'), {'n02': 2, 'n01': 3})
  (tmp_path / 'val' / 'n01' / '.DS_Store').write_bytes(b'\0')   # hidden files are ignored
  listing = _find(tmp_path, tmp_path)                         # descends into val/
  assert [os.path.relpath(f, tmp_path) for f in listing.files] == [
      'val/n01/00.png', 'val/n01/01.png', 'val/n01/02.png', 'val/n02/00.png', 'val/n02/01.png']
  np.testing.assert_array_equal(listing.labels, [0, 0, 0, 1, 1])
  assert listing.num_classes == 2


def test_non_image_file_in_class_folder_names_it(tmp_path):
  synthetic.class_folders(str(tmp_path), {'a': 1, 'b': 1})
  (tmp_path / 'b' / 'README.md').write_text('hello')
  with pytest.raises(imagenet.BadImageError, match=r'b/README.md'):
    _find(tmp_path, tmp_path)


def test_undecodable_image_names_it(tmp_path):
  synthetic.class_folders(str(tmp_path), {'a': 2})
  (tmp_path / 'a' / '99.jpg').write_bytes(b'not a jpeg at all')
  source = imagenet.eval_source(_cfg(tmp_path), 32)
  with pytest.raises(imagenet.BadImageError, match=r'a/99.jpg is not a readable image'):
    list(pipeline.batches(source, np.arange(3), 2))


def test_empty_folders(tmp_path):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(imagenet.DataNotFoundError, match=r'empty folder.*--config.data.data_dir'):
    _find(tmp_path / 'empty', tmp_path)
  (tmp_path / 'classes' / 'a').mkdir(parents=True)
  (tmp_path / 'classes' / 'b').mkdir()
  with pytest.raises(imagenet.DataNotFoundError, match=r'hold no images'):
    _find(tmp_path / 'classes', tmp_path)
  with pytest.raises(imagenet.DataNotFoundError, match=r'does not exist'):
    _find(tmp_path / 'missing', tmp_path)


def test_images_without_labels(tmp_path):
  synthetic.random_image(np.random.default_rng(0), 8, 8).save(tmp_path / 'x.png')
  with pytest.raises(imagenet.DataNotFoundError, match=r'holds images but no labels'):
    _find(tmp_path, tmp_path)


def test_archive_is_extracted_into_the_cache(tmp_path):
  synthetic.labels_folder(str(tmp_path / 'src' / 'sample'), [2, 0])
  (tmp_path / 'data').mkdir()
  with tarfile.open(tmp_path / 'data' / 'sample.tar.gz', 'w:gz') as tar:
    tar.add(tmp_path / 'src' / 'sample', arcname='sample')
  listing = _find(tmp_path / 'data', tmp_path)
  assert listing.labels.tolist() == [2, 0]
  assert all(f.startswith(str(tmp_path / 'cache')) for f in listing.files)


def test_tfds_paths_fail_clearly(tmp_path):
  (tmp_path / 'ILSVRC2012_img_val.tar').write_bytes(b'')
  with pytest.raises(imagenet.DataNotFoundError, match=r'only tfds reads.*use_tfds=True'):
    _find(tmp_path, tmp_path, use_tfds=False)
  try:
    import tensorflow_datasets  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    with pytest.raises(ImportError, match=r'tfds extra'):
      _find(tmp_path, tmp_path, use_tfds=True)
    (tmp_path / 'ILSVRC2012_img_val.tar').unlink()
    (tmp_path / 'other').mkdir()
    with pytest.raises(imagenet.DataNotFoundError, match=r'tensorflow-datasets is not installed'):
      _find(tmp_path, tmp_path, use_tfds=True)


def test_preprocess_matches_resize_then_center_crop():
  assert imagenet.resize_size(224) == 256
  rng = np.random.default_rng(0)
  # 36x48 (w x h) is already "shorter side 36" for img_size 32: only the crop acts.
  image = synthetic.random_image(rng, 48, 36)
  out = imagenet.preprocess(image, 32)
  np.testing.assert_array_equal(out, np.asarray(image)[8:40, 2:34])
  # Landscape: the shorter side (height) goes to 36, width scales by int(), then crop.
  image = synthetic.random_image(rng, 60, 100)
  resized = np.asarray(image.resize((60, 36), Image.BICUBIC))
  np.testing.assert_array_equal(imagenet.preprocess(image, 32), resized[2:34, 14:46])


def test_grayscale_and_rgba_become_rgb(tmp_path):
  rng = np.random.default_rng(1)
  gray = synthetic.random_image(rng, 36, 36, 'L')
  gray.save(tmp_path / 'g.png')
  out = imagenet.load_image(str(tmp_path / 'g.png'), 32)
  assert out.shape == (32, 32, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., 0], np.asarray(gray)[2:34, 2:34])
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  rgba = synthetic.random_image(rng, 36, 36, 'RGBA')
  rgba.save(tmp_path / 'a.png')
  out = imagenet.load_image(str(tmp_path / 'a.png'), 32)
  np.testing.assert_array_equal(out, np.asarray(rgba)[2:34, 2:34, :3])


def _cfg(data_dir, **kw):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(dict(name='imagenet', data_dir=str(data_dir), cache_dir='',
                                        use_tfds=False, eval_images=0, eval_batch_size=4, **kw))


def test_batches_are_deterministic_and_in_order(tmp_path):
  files = synthetic.labels_folder(str(tmp_path), list(range(7)))
  source = imagenet.eval_source(_cfg(tmp_path), 32)
  runs = [list(pipeline.batches(source, np.arange(7), 3, threads=t, prefetch_batches=p))
          for t, p in ((1, 1), (4, 3))]
  for a, b in zip(*runs):
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
  images = np.concatenate([b.images[:b.valid] for b in runs[0]])
  expected = np.stack([imagenet.load_image(f, 32) for f in files])
  np.testing.assert_array_equal(images, expected)
  assert [b.valid for b in runs[0]] == [3, 3, 1]
  assert runs[0][-1].labels.tolist() == [6, -1, -1]
  assert not runs[0][-1].images[1:].any()


@pytest.mark.skipif(not VAL_300.is_file(), reason='../shared/data/imagenet_val_300 not present')
def test_real_imagenet_val_300(tmp_path):
  cfg = _cfg(VAL_300.parent)
  cfg.cache_dir = str(tmp_path)
  source = imagenet.eval_source(cfg, 224)
  assert len(source.labels) == 300
  assert source.labels.min() >= 0 and source.labels.max() < 1000
  assert source.labels[0] == 472                              # ./data/ILSVRC2012_val_00000347
  batch = next(pipeline.batches(source, pipeline.subset_indices(300, 8), 8))
  assert batch.images.shape == (8, 224, 224, 3) and batch.valid == 8
  assert 20 < batch.images.mean() < 235                       # real photos, not padding
