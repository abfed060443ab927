"""A quick check that the synthetic images carry class information for the FP model.

The FP model should predict the target class on most synthetic images (the output loss asks
for it) and on about 1/num_classes of plain Gaussian noise images; a small gap means the images
did not pick up the targets (bad weights, too few iterations, too high a learning rate).

Judges (`judged_report`) are other models scoring the same images and noise: the generator's
own agreement can be met by features only it reacts to; a judge's agreement well above chance
says the images carry class information other models see too.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ouromamba_jax import checkpoints
from ouromamba_jax import data as data_lib
from ouromamba_jax.data import normalization
from ouromamba_jax.models import build_model


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, params, images):
  """One compiled forward per (model, batch shape), shared by every report and judge."""
  return model.apply({'params': params}, images)


def predict(model, params, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
  """FP logits for (N, H, W, C) normalised images, in batches: (N, num_classes) float32."""
  out = [np.asarray(_logits(model, params, jnp.asarray(images[i:i + batch_size])), np.float32)
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out)


def top1_agreement(logits: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(logits, axis=-1) == labels))


def mean_target_probability(logits: np.ndarray, labels: np.ndarray) -> float:
  probs = jax.nn.softmax(jnp.asarray(logits), axis=-1)
  return float(jnp.mean(jnp.take_along_axis(probs, jnp.asarray(labels)[:, None], axis=-1)))


def gaussian_noise(shape, seed: int, noise_std: float) -> np.ndarray:
  """N(0, noise_std) images in the normalised space (Gen's starting point): the chance-level
  reference, the same for the generator and every judge."""
  return noise_std * np.asarray(jax.random.normal(jax.random.key(seed), shape, jnp.float32))


def scores(model, params, image_sets, labels: np.ndarray, batch_size: int = 64
           ) -> Iterator[tuple[str, float]]:
  """Yields ('<set>_top1_agreement', ...) and ('<set>_mean_target_prob', ...) per (set name,
  images) of image_sets, all sets in one `predict` (one forward program to compile)."""
  names, sets = zip(*image_sets)
  all_logits = predict(model, params, np.concatenate(sets), batch_size)
  for name, logits in zip(names, np.split(all_logits, np.cumsum([len(x) for x in sets[:-1]]))):
    yield f'{name}_top1_agreement', top1_agreement(logits, labels)
    yield f'{name}_mean_target_prob', mean_target_probability(logits, labels)


def quality_report(model, params, images: np.ndarray, labels: np.ndarray, *, seed: int = 0,
                   noise_std: float = 1.0, batch_size: int = 64
                   ) -> Iterator[tuple[str, float]]:
  """Yields (name, value): top-1 agreement with the targets and mean target probability, for
  the synthetic images and for Gaussian noise of the same shape (N(0, noise_std) in the
  normalised space, the generator's starting point) with the same targets."""
  noise = gaussian_noise(images.shape, seed, noise_std)
  yield from scores(model, params, (('synthetic', images), ('noise', noise)),
                    np.asarray(labels), batch_size)


@dataclasses.dataclass(frozen=True)
class Judge:
  """A model other than the generator scoring Gen's images, with its input normalisation."""
  name: str
  model: Any
  params: Any
  mean: tuple[float, ...]
  std: tuple[float, ...]


def check_judge(name: str, model, image_size: int, num_classes: int) -> None:
  """A judge must read the generator's images and name its classes (else its agreement with
  the targets means nothing)."""
  got = (model.img_size, model.num_classes)
  if got != (image_size, num_classes):
    raise ValueError(f'gen.judges: {name} takes {got[0]}x{got[0]} images with {got[1]} classes, '
                     f'the generator {image_size}x{image_size} with {num_classes}; judge with '
                     'a model of the same image size and classes.')


def bundled_judge(name: str, image_size: int, num_classes: int) -> Judge:
  """The bundled testbed `name` as a judge, checked against the generator's image size and
  class count before its weights are read."""
  if name not in checkpoints.BUNDLED:
    raise ValueError(f'gen.judges: {name!r} is not a bundled model; bundled: '
                     f'{sorted(checkpoints.BUNDLED)}.')
  model = build_model(name)
  check_judge(name, model, image_size, num_classes)
  dataset = data_lib.dataset_module(checkpoints.BUNDLED_DATASETS[name])
  return Judge(name, model, checkpoints.load_checkpoint(checkpoints.BUNDLED_NAME, model),
               tuple(dataset.MEAN), tuple(dataset.STD))


def in_judge_space(images: np.ndarray, mean, std, judge: Judge) -> np.ndarray:
  """Images stored in the generator's normalisation (mean, std) as the judge's input: the same
  array when the judge was trained with the same statistics, else the same pixels moved."""
  if np.allclose(mean, judge.mean) and np.allclose(std, judge.std):
    return images
  return normalization.renormalize(images, mean, std, judge.mean, judge.std)


def judged_report(judges: Sequence[Judge], images: np.ndarray, labels: np.ndarray, mean, std,
                  num_classes: int, *, seed: int = 0, noise_std: float = 1.0,
                  batch_size: int = 64) -> Iterator[tuple[str, float]]:
  """Yields ('judge/<name>/<score>', value): quality_report's scores under each judge, on the
  same images and the same noise, stored in the generator's normalisation (mean, std) with its
  num_classes."""
  labels = np.asarray(labels)
  noise = gaussian_noise(images.shape, seed, noise_std)
  for judge in judges:
    check_judge(judge.name, judge.model, images.shape[1], num_classes)
    sets = [(n, in_judge_space(x, mean, std, judge))
            for n, x in (('synthetic', images), ('noise', noise))]
    for key, value in scores(judge.model, judge.params, sets, labels, batch_size):
      yield f'judge/{judge.name}/{key}', value
