"""ImageNet-format evaluation data with hustvl's eval preprocessing.

`data_dir` may be (searched in this order):
  * a labels file, or a folder holding one (`dataset.txt` | `val.txt` | `labels.txt`): lines
    `./data/FILE, LABEL` (or `FILE LABEL`), paths relative to the file, standard 0-999 labels
    (the layout of ../shared/data/imagenet_val_300);
  * a folder of class subfolders `<wnid>/<image>` (or such a folder's `val/`): class index =
    sorted folder position, as torchvision's ImageFolder, so all 1000 folders must be there;
  * a folder holding one `.tar.gz`/`.tgz`/`.tar` of either layout (extracted once into the cache);
  * `ILSVRC2012_img_val.tar` (+ train tar) for tfds `imagenet2012`, prepared from that manual_dir
    and exported once into the cache as a labels-file folder (needs the `tfds` extra).
With `data_dir` '' the folder in $OUROMAMBA_IMAGENET_DIR is used, else an already prepared
tfds imagenet2012.

Preprocessing (hustvl datasets.build_transform, eval): resize the shorter side to
int(img_size / 0.875) (224 -> 256) bicubic, center crop img_size, any mode -> RGB (grayscale is
replicated, RGBA's alpha dropped, as PIL `convert('RGB')` in torchvision's loader), then
ImageNet mean/std on the device.

Non-image files: hidden files (`.DS_Store`, `._x`) are ignored; any other file without an image
suffix in a class folder, and any listed or suffixed file that does not decode, stops the run
with its name. Skipping it instead would silently change the accuracy's denominator.
"""
from __future__ import annotations

import os
import tempfile
from typing import NamedTuple, Optional

import numpy as np
from PIL import Image

from ouromamba_jax.data import archives
from ouromamba_jax.data.image_folder import IMAGE_SUFFIXES
from ouromamba_jax.data import pipeline

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP_RATIO = 0.875                      # hustvl --eval-crop-ratio default
LABELS_FILES = ('dataset.txt', 'val.txt', 'labels.txt')
VAL_SUBFOLDERS = ('val', 'validation')
ARCHIVE_SUFFIXES = ('.tar.gz', '.tgz', '.tar')
TFDS_MANUAL_FILES = ('ILSVRC2012_img_val.tar', 'ILSVRC2012_img_train.tar')
ENV_DIR = 'OUROMAMBA_IMAGENET_DIR'
_MAX_LISTED = 5


class DataNotFoundError(pipeline.DataNotFoundError):
  pass


class BadImageError(ValueError):
  """A file in the data that is not a readable image; the message names it."""


class Listing(NamedTuple):
  files: list[str]
  labels: np.ndarray                    # (N,) int32
  num_classes: Optional[int]            # class folders imply a count; a labels file does not
  description: str


def _names(items: list[str]) -> str:
  more = f' and {len(items) - _MAX_LISTED} more' if len(items) > _MAX_LISTED else ''
  return ', '.join(items[:_MAX_LISTED]) + more


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_SUFFIXES)


def _visible(root: str) -> list[str]:
  return sorted(n for n in os.listdir(root) if not n.startswith('.'))


# --------------------------------------------------------------------------------------------
# Preprocessing.

def resize_size(img_size: int) -> int:
  """Shorter-side length before the center crop: int(img_size / 0.875), 256 for 224."""
  return int(img_size / CROP_RATIO)


def preprocess(image: Image.Image, img_size: int) -> np.ndarray:
  """torchvision Resize(int(img_size/0.875), bicubic) + CenterCrop(img_size) -> (S, S, 3) uint8."""
  image = image.convert('RGB')
  w, h = image.size
  short = resize_size(img_size)
  if w <= h:
    new_w, new_h = short, int(short * h / w)
  else:
    new_w, new_h = int(short * w / h), short
  if (new_w, new_h) != (w, h):
    image = image.resize((new_w, new_h), Image.BICUBIC)
  top = int(round((new_h - img_size) / 2.0))
  left = int(round((new_w - img_size) / 2.0))
  image = image.crop((left, top, left + img_size, top + img_size))
  return np.asarray(image, np.uint8)


def load_image(path: str, img_size: int) -> np.ndarray:
  """Decodes and preprocesses one file; a file that is not an image raises BadImageError."""
  try:
    with Image.open(path) as image:
      return preprocess(image, img_size)
  except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError is an OSError
    raise BadImageError(f'{path} is not a readable image ({type(e).__name__}: {e}); remove it '
                        'from the data folder or replace it with a valid image.') from e


# --------------------------------------------------------------------------------------------
# Layouts.

def read_labels_file(path: str) -> Listing:
  """`FILE, LABEL` or `FILE LABEL` lines (blank lines and # comments skipped)."""
  root = os.path.dirname(os.path.abspath(path))
  files, labels, missing = [], [], []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      line = line.strip()
      if not line or line.startswith('#'):
        continue
      parts = line.rsplit(',', 1) if ',' in line else line.rsplit(None, 1)
      if len(parts) != 2:
        raise ValueError(f'{path}:{lineno}: expected "FILE, LABEL", got {line!r}')
      name, label = parts[0].strip(), parts[1].strip()
      try:
        labels.append(int(label))
      except ValueError:
        raise ValueError(f'{path}:{lineno}: label {label!r} is not an integer class index') from None
      if not _is_image(name):
        raise BadImageError(f'{path}:{lineno}: {name!r} is not an image file (suffixes '
                            f'{IMAGE_SUFFIXES}); remove the line or fix the name.')
      file = os.path.normpath(os.path.join(root, name))
      if not os.path.isfile(file):
        missing.append(file)
      files.append(file)
  if missing:
    raise DataNotFoundError(f'{path} lists {len(missing)} files that do not exist: '
                            f'{_names(missing)}')
  if not files:
    raise DataNotFoundError(f'{path} lists no images; add "FILE, LABEL" lines.')
  return Listing(files, np.asarray(labels, np.int32), None, f'labels file {path}')


def list_class_folders(root: str) -> Listing:
  """root/<class>/<image>, sorted by (class, name); class index = sorted folder position."""
  classes = [d for d in _visible(root) if os.path.isdir(os.path.join(root, d))]
  files, labels, bad = [], [], []
  for index, cls in enumerate(classes):
    folder = os.path.join(root, cls)
    for name in _visible(folder):
      path = os.path.join(folder, name)
      if os.path.isfile(path) and _is_image(name):
        files.append(path)
        labels.append(index)
      else:
        bad.append(path)
  if bad:
    raise BadImageError(f'{root}: {len(bad)} entries in the class folders are not image files '
                        f'(suffixes {IMAGE_SUFFIXES}): {_names(bad)}. Class folders must hold '
                        'only images; move these out.')
  if not files:
    raise DataNotFoundError(f'{root}: the class folders {_names(classes)} hold no images.')
  return Listing(files, np.asarray(labels, np.int32), len(classes), f'class folders {root}')


def find_layout(root: str, depth: int = 2) -> Optional[Listing]:
  """The labels file or class folders under root (None when neither is there).

  Descends into a lone wrapper folder (an archive's top level) or a `val/` subfolder.
  """
  for name in LABELS_FILES:
    if os.path.isfile(os.path.join(root, name)):
      return read_labels_file(os.path.join(root, name))
  subdirs = [os.path.join(root, d) for d in _visible(root) if os.path.isdir(os.path.join(root, d))]
  if depth > 0:
    for name in VAL_SUBFOLDERS:
      if os.path.isdir(os.path.join(root, name)):
        return find_layout(os.path.join(root, name), depth - 1)
    if len(subdirs) == 1 and not any(_is_image(n) for n in os.listdir(subdirs[0])):
      return find_layout(subdirs[0], depth - 1)
  if subdirs:
    return list_class_folders(root)
  if any(_is_image(n) for n in os.listdir(root)):
    raise DataNotFoundError(
        f'{root} holds images but no labels: add a labels file ({LABELS_FILES[0]} with '
        '"./FILE, LABEL" lines) or sort the images into class folders.')
  return None


def _archives(folder: str) -> list[str]:
  return [os.path.join(folder, n) for n in _visible(folder)
          if n.lower().endswith(ARCHIVE_SUFFIXES) and n not in TFDS_MANUAL_FILES]


def _local(path: str, cache_dir: str) -> Optional[Listing]:
  """A labels file, a layout folder, or the one archive in a folder (extracted once)."""
  if os.path.isfile(path):
    if path.lower().endswith(ARCHIVE_SUFFIXES):
      return find_layout(archives.extract_once(path, cache_dir))
    return read_labels_file(path)
  listing = find_layout(path)
  if listing is not None:
    return listing
  found = _archives(path)
  if len(found) > 1:
    raise ValueError(f'{path} holds several archives ({_names(found)}); point '
                     '--config.data.data_dir at one of them.')
  if found:
    listing = find_layout(archives.extract_once(found[0], cache_dir))
    if listing is None:
      raise DataNotFoundError(f'{found[0]} holds neither a labels file ({LABELS_FILES}) nor '
                              'class folders.')
    return listing
  return None


# --------------------------------------------------------------------------------------------
# tensorflow-datasets imagenet2012.

def _import_tfds():
  try:
    # Lazy: tensorflow-datasets is an optional extra (pip install .[tfds]) and slow to import.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('tensorflow-datasets is not installed; install the tfds extra '
                      '(pip install -e ".[tfds]") to read imagenet2012 through tfds.') from e
  return tfds


def _tfds_export(manual_dir: str, cache_dir: str) -> Listing:
  """Prepares tfds imagenet2012 (from manual_dir if given) and writes its validation split once
  as JPEG files + dataset.txt in the cache, so it reads like any labels-file folder."""
  tfds = _import_tfds()
  builder = tfds.builder('imagenet2012')
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir or None))
  except Exception as e:  # pylint: disable=broad-except
    raise DataNotFoundError(
        f'tfds could not prepare imagenet2012 (manual_dir={manual_dir or "tfds default"}): '
        f'{type(e).__name__}: {e}') from e
  target = os.path.join(cache_dir, f'imagenet2012-validation-{builder.version}')
  if not os.path.isdir(target):
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.imagenet2012-', dir=cache_dir)
    os.makedirs(os.path.join(tmp, 'data'))
    ds = builder.as_dataset(split='validation', shuffle_files=False,
                            decoders={'image': tfds.decode.SkipDecoding()})
    lines = []
    for i, example in enumerate(tfds.as_numpy(ds)):
      name = os.path.basename(example['file_name'].decode()) or f'{i:08d}.JPEG'
      with open(os.path.join(tmp, 'data', name), 'wb') as f:
        f.write(example['image'])
      lines.append(f'./data/{name}, {int(example["label"])}\n')
    with open(os.path.join(tmp, LABELS_FILES[0]), 'w') as f:
      f.writelines(lines)
    try:
      os.replace(tmp, target)
    except OSError:  # another process finished first
      if not os.path.isdir(target):
        raise
  return read_labels_file(os.path.join(target, LABELS_FILES[0]))


# --------------------------------------------------------------------------------------------
# Entry points.

def find(data_dir: str = '', cache_dir: str = '', use_tfds: bool = True) -> Listing:
  """The evaluation files and labels (see the module docstring for the search order)."""
  cache_dir = cache_dir or archives.default_cache_dir()
  data_dir = data_dir or os.environ.get(ENV_DIR, '')
  looked = []
  if data_dir:
    if not os.path.exists(data_dir):
      raise DataNotFoundError(f'data.data_dir {data_dir!r} does not exist. ' + _hint())
    if os.path.isdir(data_dir) and not _visible(data_dir):
      raise DataNotFoundError(f'data.data_dir {data_dir!r} is an empty folder. ' + _hint())
    manual = (os.path.isdir(data_dir) and
              os.path.isfile(os.path.join(data_dir, TFDS_MANUAL_FILES[0])))
    if not manual:
      listing = _local(data_dir, cache_dir)
      if listing is not None:
        return listing
      looked.append(f'{data_dir} (no labels file, class folders or archive)')
    elif not use_tfds:
      raise DataNotFoundError(f'{data_dir} holds {TFDS_MANUAL_FILES[0]}, which only tfds reads; '
                              'set --config.data.use_tfds=True (and install the tfds extra).')
    else:
      return _tfds_export(data_dir, cache_dir)
  if use_tfds:
    try:
      return _tfds_export('', cache_dir)
    except (ImportError, DataNotFoundError) as e:
      looked.append(f'tfds imagenet2012 ({e})')
  raise DataNotFoundError('ImageNet evaluation data not found; looked at: ' +
                          ('; '.join(looked) or 'nothing (data.data_dir is empty)') + '. ' + _hint())


def _hint() -> str:
  return ('Put an ImageNet validation folder (class subfolders, or images plus a dataset.txt of '
          '"./FILE, LABEL" lines, or an archive of either, or ILSVRC2012_img_val.tar for tfds) '
          'somewhere and set --config.data.data_dir=PATH (or $' + ENV_DIR + '); the 300-image '
          'sample is ../shared/data/imagenet_val_300.')


def eval_source(data_cfg, img_size: int) -> pipeline.EvalSource:
  """The ImageNet validation files as a `pipeline.EvalSource` preprocessed to img_size."""
  listing = find(data_cfg.data_dir, data_cfg.cache_dir, data_cfg.use_tfds)
  files = listing.files
  return pipeline.EvalSource(f'imagenet: {listing.description}', listing.labels,
                             lambda i: load_image(files[i], img_size), img_size, MEAN, STD,
                             num_classes=listing.num_classes)
