"""Data parallelism over two (forced host) devices, in a subprocess so XLA_FLAGS can apply."""
import os
import subprocess
import sys
import textwrap

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SCRIPT = textwrap.dedent('''
    import dataclasses, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    assert jax.device_count() == 2, jax.devices()
    from ouromamba_jax.gen import generator, objective, optimize
    from tests.gen.conftest import tiny_model, tiny_gen_spec

    model = tiny_model()
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
    # 'mean' Δ normalisation: min-max over the nearly equal Δ of a random model amplifies
    # rounding differences (1 / (max - min)), which would blur this comparison.
    cfg = tiny_gen_spec(num_images=4, images_per_step=4, iterations=3,
                          delta_normalization='mean')

    # The step keeps the image batch (and Adam moments) split over both devices, and its
    # losses and pixel gradients equal one device's (up to float rounding). The one-device step
    # is the program generate(num_devices=1) below compiles, so it is compiled once.
    optimizer = optimize.build_optimizer(cfg)
    gen_model = objective.generation_model(model, cfg)
    labels = jnp.arange(4)

    def one_step(mesh):
      step = optimize.make_step(gen_model, cfg, optimizer, mesh)
      keys = jax.device_put(optimize.image_keys(0, np.arange(4)), optimize.batch_sharding(mesh))
      images = optimize.initial_images(keys, (32, 32, 3), 1.0)
      state = optimize.shard_batch_tree(optimize.GroupState(images, optimizer.init(images)),
                                        mesh, 4)
      return step(jax.device_put(params, optimize.replicated(mesh)), state,
                  jax.device_put(labels, optimize.batch_sharding(mesh)), keys, 0)

    two_state, two_metrics = one_step(optimize.data_mesh(0))
    shards = two_state.images.addressable_shards
    assert len(shards) == 2 and {s.data.shape for s in shards} == {(2, 32, 32, 3)}, shards
    assert two_state.images.sharding.spec == jax.sharding.PartitionSpec('data')
    one_state, one_metrics = one_step(optimize.data_mesh(1))
    assert len(one_state.images.sharding.device_set) == 1
    for name in ('total', 'contrastive', 'pse', 'output'):   # the step's loss terms
      np.testing.assert_allclose(two_metrics[name], one_metrics[name], rtol=1e-5, err_msg=name)
    # Adam's first moment after step 0 is (1 - b1) * gradient: every pixel's gradient
    one_grad, two_grad = (np.asarray(optax.tree_utils.tree_get(s.opt_state, 'mu'))
                          for s in (one_state, two_state))
    scale = float(np.abs(one_grad).max())
    assert scale > 0
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
