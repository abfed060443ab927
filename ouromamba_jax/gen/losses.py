"""OuroMamba-Gen losses, each returned per image (shape (B,)) so images never interact.

- `patch_contrastive_loss`: L_C, InfoNCE over the patches of one image with the top-K most
  cosine-similar patches as positives (picked under stop-gradient) and the others as negatives.
- `patch_similarity_entropy`: PSAQ-ViT's differential entropy of the patch-similarity
  distribution (Gaussian KDE on a fixed grid, trapezoid rule); L_PSE = -entropy.
- `output_loss`: L_O between the classifier output and the target class (MAE or CE).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

OUTPUT_LOSSES = ('mae', 'ce')

_NORM_EPS = 1e-12


def cosine_similarity_matrix(features: jax.Array) -> jax.Array:
  """(B, P, F) -> (B, P, P) cosine similarities between the patches of each image."""
  f = features.astype(jnp.float32)
  f = f * jax.lax.rsqrt(jnp.sum(f * f, axis=-1, keepdims=True) + _NORM_EPS)
  return jnp.einsum('bpf,bqf->bpq', f, f)


def topk_positive_mask(similarity: jax.Array, num_positives: int) -> jax.Array:
  """(B, P, P) bool: for each anchor, its K most similar other patches (self excluded)."""
  p = similarity.shape[-1]
  if not 1 <= num_positives <= p - 2:
    raise ValueError(f'num_positives={num_positives} needs 1 <= K <= num_patches - 2 = {p - 2} '
                     '(every anchor needs at least one negative); lower gen.num_positives.')
  self_mask = jnp.eye(p, dtype=bool)
  candidates = jnp.where(self_mask, -jnp.inf, jax.lax.stop_gradient(similarity))
  _, index = jax.lax.top_k(candidates, num_positives)                 # (B, P, K)
  return jnp.any(index[..., None] == jnp.arange(p), axis=-2)         # (B, P, P)


def patch_contrastive_loss(features: jax.Array, num_positives: int = 12,
                           temperature: float = 0.1) -> jax.Array:
  """Per-image InfoNCE, (B, P, F) -> (B,).

  L = mean_i -log(Σ_{j∈Pos(i)} exp(s_ij/κ) / Σ_{j≠i} exp(s_ij/κ)), where s_ij is the cosine
  similarity of patches i and j and Pos(i) the K patches most similar to i (self excluded),
  chosen without gradient; every other patch of the image is a negative.
  """
  sim = cosine_similarity_matrix(features)
  logits = sim / temperature
  positives = topk_positive_mask(sim, num_positives)
  others = ~jnp.eye(sim.shape[-1], dtype=bool)
  log_pos = jax.nn.logsumexp(logits, axis=-1, where=positives)
  log_all = jax.nn.logsumexp(logits, axis=-1, where=others)
  return jnp.mean(log_all - log_pos, axis=-1)


def gaussian_kde(samples: jax.Array, points: jax.Array, bandwidth: float) -> jax.Array:
  """Density of each image's samples (B, S) evaluated at points (B, G): (B, G)."""
  diff = points[:, :, None] - samples[:, None, :]
  var = bandwidth ** 2
  return jnp.mean(jnp.exp(-diff * diff / (2 * var)), axis=-1) / jnp.sqrt(2 * jnp.pi * var)


def patch_similarity_entropy(features: jax.Array, bandwidth: float = 0.01,
                             grid_points: int = 10) -> jax.Array:
  """PSAQ-ViT's differential entropy of the patch cosine similarities, per image: (B,).

  As in PSAQ-ViT: all P×P similarities (diagonal included) are the KDE samples, the density is
  evaluated on `grid_points` evenly spaced points between the smallest and largest similarity
  (no gradient through the grid ends), shifted by 1e-4, and -p log p is integrated with the
  trapezoid rule. One change: the grid spans each image's own range instead of the batch's, so
  an image's loss does not depend on the images it is optimised with.
  """
  sim = cosine_similarity_matrix(features)
  samples = sim.reshape(sim.shape[0], -1)
  lo = jax.lax.stop_gradient(jnp.min(samples, axis=1, keepdims=True))
  hi = jax.lax.stop_gradient(jnp.max(samples, axis=1, keepdims=True))
  points = lo + (hi - lo) * jnp.linspace(0.0, 1.0, grid_points)[None, :]
  pdf = gaussian_kde(samples, points, bandwidth) + 1e-4
  integrand = -pdf * jnp.log(pdf)
  dx = jnp.diff(points, axis=-1)
  return jnp.sum(0.5 * (integrand[:, 1:] + integrand[:, :-1]) * dx, axis=-1)


def output_loss(logits: jax.Array, labels: jax.Array, kind: str = 'mae') -> jax.Array:
  """L_O per image. mae: Σ_c |softmax(logits)_c - onehot_c| (= 2(1 - p_target)); ce: -log p_target.

  The paper calls L_O "MAE" without more detail; the sum over classes (an L1 distance) keeps
  the scale independent of the number of classes (a mean over classes would just divide λ by C).
  """
  if kind not in OUTPUT_LOSSES:
    raise ValueError(f'output_loss must be one of {OUTPUT_LOSSES}, got {kind!r}')
  logits = logits.astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if kind == 'ce':
    return -jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1)
  return jnp.sum(jnp.abs(jax.nn.softmax(logits) - onehot), axis=-1)
