"""Data parallelism over two (forced host) devices, in a subprocess so XLA_FLAGS can apply."""
import os
import subprocess
import sys
import textwrap

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SCRIPT = textwrap.dedent('''
    import dataclasses, sys
    import jax, jax.numpy as jnp, numpy as np
    assert jax.device_count() == 2, jax.devices()
    from ouromamba_jax.gen import generator, objective, optimize
    from tests.gen.conftest import tiny_model, tiny_gen_spec

    model = tiny_model()
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
    # 'mean' Δ normalisation: min-max over the nearly equal Δ of a random model amplifies
    # rounding differences (1 / (max - min)), which would blur this comparison.
    cfg = tiny_gen_spec(num_images=4, images_per_step=4, iterations=3,
                          delta_normalization='mean')

    # The step keeps the image batch (and Adam moments) split over both devices.
    mesh = optimize.data_mesh(0)
    spec = cfg
    optimizer = optimize.build_optimizer(cfg)
    step = optimize.make_step(objective.generation_model(model, spec), spec, optimizer,
                              mesh)
    keys = jax.device_put(optimize.image_keys(0, np.arange(4)), optimize.batch_sharding(mesh))
    images = optimize.initial_images(keys, (32, 32, 3), 1.0)
    state = optimize.shard_batch_tree(optimize.GroupState(images, optimizer.init(images)), mesh, 4)
    labels = jax.device_put(jnp.arange(4), optimize.batch_sharding(mesh))
    state, _ = step(jax.device_put(params, optimize.replicated(mesh)), state, labels, keys, 0)
    shards = state.images.addressable_shards
    assert len(shards) == 2 and {s.data.shape for s in shards} == {(2, 32, 32, 3)}, shards
    assert state.images.sharding.spec == jax.sharding.PartitionSpec('data')

    # Same per-image losses and pixel gradients as on one device (up to float rounding).
    def losses_and_grads(x, labels, p):
      fn = lambda x: objective.per_image_losses(objective.generation_model(model, spec), p, x,
                                                labels, spec)['total']
      total, vjp = jax.vjp(fn, x)
      return total, vjp(jnp.ones_like(total))[0]
    run = jax.jit(losses_and_grads)
    x = optimize.initial_images(optimize.image_keys(0, np.arange(4)), (32, 32, 3), 1.0)
    one_total, one_grad = run(x, jnp.arange(4), params)
    two_total, two_grad = run(jax.device_put(x, optimize.batch_sharding(mesh)), labels,
                              jax.device_put(params, optimize.replicated(mesh)))
    np.testing.assert_allclose(two_total, one_total, rtol=1e-5)
    scale = float(jnp.abs(one_grad).max())
    np.testing.assert_allclose(two_grad, one_grad, rtol=1e-3, atol=1e-5 * scale)

    # A whole run on two devices gives the one-device loss curve and images.
    two = generator.generate(model, params, cfg)
    one = generator.generate(model, params, dataclasses.replace(cfg, num_devices=1))
    np.testing.assert_allclose(two.history[0]['total'], one.history[0]['total'], rtol=1e-4)
    err = float(np.abs(two.images - one.images).max())
    assert err < 1e-3, err
    print('SHARDING_OK', err)
''')


def test_two_devices_split_the_batch_and_match_one_device():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu', PYTHONPATH=_REPO)
  proc = subprocess.run([sys.executable, '-c', _SCRIPT], cwd=_REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  assert 'SHARDING_OK' in proc.stdout
  print(proc.stdout.strip().splitlines()[-1])
