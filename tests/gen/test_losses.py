"""Gen losses against plain NumPy versions of their definitions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax.gen import losses
from tests import random_init


def _naive_info_nce(features, k, temperature):
  """Per image: mean over anchors of -log(Σ_top-K exp(s/κ) / Σ_{j≠i} exp(s/κ)), by loops."""
  out = []
  for f in features.astype(np.float64):
    f = f / np.linalg.norm(f, axis=-1, keepdims=True)
    p = len(f)
    terms = []
    for i in range(p):
      sims = {j: float(f[i] @ f[j]) for j in range(p) if j != i}
      positives = sorted(sims, key=lambda j: -sims[j])[:k]
      num = sum(np.exp(sims[j] / temperature) for j in positives)
      den = sum(np.exp(s / temperature) for s in sims.values())
      terms.append(-np.log(num / den))
    out.append(np.mean(terms))
  return np.array(out)


@pytest.mark.parametrize('k,temperature', [(1, 0.5), (3, 0.1), (5, 1.0)])
def test_contrastive_loss_matches_naive_info_nce(k, temperature):
  features = np.random.default_rng(k).normal(size=(3, 9, 6)).astype(np.float32)
  got = losses.patch_contrastive_loss(jnp.asarray(features), k, temperature)
  np.testing.assert_allclose(got, _naive_info_nce(features, k, temperature), rtol=1e-4)


def test_positives_are_picked_under_stop_gradient():
  """The gradient equals that of the same InfoNCE with the positive set held fixed."""
  features = jnp.asarray(random_init.normal(0, (2, 8, 5)))
  mask = losses.topk_positive_mask(losses.cosine_similarity_matrix(features), 3)

  def fixed(f):
    logits = losses.cosine_similarity_matrix(f) / 0.2
    others = ~jnp.eye(8, dtype=bool)
    return jnp.sum(jnp.mean(jax.nn.logsumexp(logits, -1, where=others)
                            - jax.nn.logsumexp(logits, -1, where=mask), -1))

  got = jax.grad(lambda f: jnp.sum(losses.patch_contrastive_loss(f, 3, 0.2)))(features)
  np.testing.assert_allclose(got, jax.grad(fixed)(features), rtol=1e-5, atol=1e-7)
  assert np.all(np.isfinite(got)) and np.any(got != 0)


def test_too_many_positives_is_a_clear_error():
  with pytest.raises(ValueError, match='num_positives'):
    losses.patch_contrastive_loss(jnp.ones((1, 5, 3)), 4)


def _naive_pse(features, bandwidth, points):
  """PSAQ-ViT: KDE over all P*P cosine similarities, -∫ p log p by trapezoid (per image)."""
  out = []
  for f in features.astype(np.float64):
    f = f / np.linalg.norm(f, axis=-1, keepdims=True)
    sims = (f @ f.T).ravel()
    x = np.linspace(sims.min(), sims.max(), points)
    pdf = np.array([np.mean(np.exp(-(xi - sims) ** 2 / (2 * bandwidth ** 2)))
                    for xi in x]) / np.sqrt(2 * np.pi * bandwidth ** 2) + 1e-4
    y = -pdf * np.log(pdf)
    out.append(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))
  return np.array(out)


@pytest.mark.parametrize('bandwidth,points', [(0.01, 10), (0.1, 25)])
def test_patch_similarity_entropy_matches_psaq_formula(bandwidth, points):
  features = np.random.default_rng(0).normal(size=(2, 7, 4)).astype(np.float32)
  got = losses.patch_similarity_entropy(jnp.asarray(features), bandwidth, points)
  np.testing.assert_allclose(got, _naive_pse(features, bandwidth, points), rtol=2e-4, atol=1e-5)


def test_entropy_gradient_is_finite_and_nonzero():
  features = jnp.asarray(random_init.normal(1, (2, 7, 4)))
  g = jax.grad(lambda f: jnp.sum(losses.patch_similarity_entropy(f, 0.1, 10)))(features)
  assert np.all(np.isfinite(g)) and np.any(g != 0)


def test_output_losses():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
  labels = jnp.array([0, 2])
  p = np.asarray(jax.nn.softmax(logits))
  np.testing.assert_allclose(losses.output_loss(logits, labels, 'mae'),
                             2 * (1 - p[[0, 1], [0, 2]]), rtol=1e-6)
  np.testing.assert_allclose(losses.output_loss(logits, labels, 'ce'),
                             -np.log(p[[0, 1], [0, 2]]), rtol=1e-6)
  with pytest.raises(ValueError, match='output_loss'):
    losses.output_loss(logits, labels, 'mse')
