"""XLA reference scan (sequential and associative) against a float64 NumPy loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.selective_scan import api
from kernels_pallas.selective_scan import reference


def random_inputs(batch=2, length=9, channels=6, n_state=4, seed=0):
  rng = np.random.default_rng(seed)
  f32 = lambda *s, scale=1.0: (rng.standard_normal(s) * scale).astype(np.float32)
  return dict(
      u=f32(batch, length, channels), delta=f32(batch, length, channels),
      A=-np.exp(f32(channels, n_state, scale=0.5)), B=f32(batch, length, n_state),
      C=f32(batch, length, n_state), D=f32(channels), z=f32(batch, length, channels),
      delta_bias=f32(channels, scale=0.5))


def numpy_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
               reverse=False):
  """mamba_ssm selective_scan_ref in float64, one time step at a time."""
  u, delta, A, B, C = (np.asarray(x, np.float64) for x in (u, delta, A, B, C))
  if delta_bias is not None:
    delta = delta + delta_bias
  if delta_softplus:
    delta = np.logaddexp(0.0, delta)
  batch, length, channels = u.shape
  h = np.zeros((batch, channels, A.shape[1]))
  ys = np.zeros_like(u)
  states = np.zeros((batch, length, channels, A.shape[1]))
  for t in (range(length - 1, -1, -1) if reverse else range(length)):
    h = np.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None]
    states[:, t] = h
    ys[:, t] = np.einsum('bdn,bn->bd', h, C[:, t])
  if D is not None:
    ys = ys + u * D
  if z is not None:
    ys = ys * (z / (1.0 + np.exp(-np.asarray(z, np.float64))))
  return ys, states


def rel(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize('implementation', ['sequential', 'associative', 'xla'])
@pytest.mark.parametrize('reverse', [False, True])
def test_matches_numpy_loop(implementation, reverse):
  x = random_inputs()
  y = api.selective_scan(**x, reverse=reverse, implementation=implementation)
  assert y.shape == x['u'].shape and y.dtype == jnp.float32
  assert rel(y, numpy_scan(**x, reverse=reverse)[0]) < 1e-5


@pytest.mark.parametrize('drop', ['D', 'z', 'delta_bias'])
def test_optional_terms_and_no_softplus(drop):
  x = random_inputs(seed=1)
  x[drop] = None
  x['delta'] = np.abs(x['delta'])  # without softplus delta must already be positive
  for softplus in (True, False):
    y = api.selective_scan(**x, delta_softplus=softplus, implementation='associative')
    assert rel(y, numpy_scan(**x, delta_softplus=softplus)[0]) < 1e-5


@pytest.mark.parametrize('implementation', ['sequential', 'associative'])
def test_return_states_gives_every_fp32_state(implementation):
  x = random_inputs(seed=2)
  y, states = api.selective_scan(**x, return_states=True, implementation=implementation)
  y_ref, states_ref = numpy_scan(**x)
  assert states.shape == (2, 9, 6, 4) and states.dtype == jnp.float32
  assert rel(states, states_ref) < 1e-5
  np.testing.assert_array_equal(y, api.selective_scan(**x, implementation=implementation))
  assert rel(y, y_ref) < 1e-5


@pytest.mark.parametrize('implementation', ['sequential', 'associative'])
def test_reverse_equals_flip_scan_flip(implementation):
  x = random_inputs(seed=3)
  flip = lambda a: a[:, ::-1]
  flipped = {k: flip(v) if k in ('u', 'delta', 'B', 'C', 'z') else v for k, v in x.items()}
  y_rev, s_rev = api.selective_scan(**x, reverse=True, return_states=True,
                                    implementation=implementation)
  y_flip, s_flip = api.selective_scan(**flipped, return_states=True,
                                      implementation=implementation)
  np.testing.assert_allclose(y_rev, flip(y_flip), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(s_rev, flip(s_flip), rtol=1e-5, atol=1e-6)


def test_bf16_inputs_keep_dtype_and_stay_close():
  x = random_inputs(seed=4)
  x_bf16 = {k: jnp.asarray(v, jnp.bfloat16) if k in ('u', 'delta', 'B', 'C', 'z') else v
            for k, v in x.items()}
  y = api.selective_scan(**x_bf16, implementation='associative')
  assert y.dtype == jnp.bfloat16
  assert rel(y.astype(jnp.float32), numpy_scan(**x)[0]) < 3e-2


@pytest.mark.parametrize('reverse', [False, True])
def test_channel_chunked_scan_equals_unchunked(reverse):
  x = random_inputs(batch=2, length=5, channels=12, n_state=4, seed=5)
  per_channel = 4 * 2 * 5 * 4  # bytes of one channel's (B, L, 1, N) fp32 intermediate
  limit = 3 * per_channel
  assert reference._channel_chunks(2, 5, 12, 4, limit) == 4  # pylint: disable=protected-access
  whole = reference.selective_scan_xla(**x, reverse=reverse)
  chunked = jax.jit(lambda a: reference.selective_scan_xla(
      **a, reverse=reverse, max_intermediate_bytes=limit))(x)
  np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)
  no_extras = dict(x, D=None, z=None, delta_bias=None)
  np.testing.assert_allclose(
      reference.selective_scan_xla(**no_extras, max_intermediate_bytes=limit),
      reference.selective_scan_xla(**no_extras), rtol=1e-6, atol=1e-6)


def test_unknown_implementation_is_rejected():
  with pytest.raises(ValueError, match="unknown implementation 'cuda'"):
    api.selective_scan(**random_inputs(), implementation='cuda')


@pytest.mark.parametrize('backend, batch, small_batch, want', [
    ('gpu', None, 0, 'triton'), ('gpu', 64, 0, 'triton'), ('gpu', 1, 0, 'triton'),
    ('gpu', 4, 4, 'triton'), ('gpu', 1, 4, 'associative'), ('gpu', 3, 4, 'associative'),
    ('cpu', 1, 0, 'sequential'), ('cpu', 64, 0, 'sequential'), ('tpu', 64, 0, 'associative')])
def test_default_implementation_per_platform_and_batch(monkeypatch, backend, batch, small_batch,
                                                        want):
  """On a GPU the kernel at every batch (its time split covers batch 1); the SMALL_BATCH switch
  (the benchmarks' A/B) sends smaller batches to the associative scan."""
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  monkeypatch.setattr(api, 'SMALL_BATCH', small_batch)
  assert api.default_implementation(batch) == want
