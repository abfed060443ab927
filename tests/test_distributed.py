"""ouromamba_jax.distributed: the initialize arguments, and Gen, calibration and evaluation on
two localhost processes (2 forced CPU devices each, gloo collectives) equal to one process on
one device; Gen's step split over one process's devices equal to one device's."""
import os
import socket
import subprocess
import sys
import textwrap
import time

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax import distributed
from ouromamba_jax.distributed import DistributedSpec
from tests.gen.conftest import tiny_model

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_coordinator_is_one_process():
  assert distributed.initialize_arguments(DistributedSpec(), environ={}) is None


def test_config_fields_come_before_the_environment():
  env = {'JAX_COORDINATOR_ADDRESS': 'env:1', 'JAX_NUM_PROCESSES': '4', 'JAX_PROCESS_ID': '3'}
  assert distributed.initialize_arguments(DistributedSpec(), env) == {
      'coordinator_address': 'env:1', 'num_processes': 4, 'process_id': 3}
  spec = DistributedSpec(coordinator_address='10.0.0.1:1234', num_processes=2, process_id=0)
  assert distributed.initialize_arguments(spec, env) == {
      'coordinator_address': '10.0.0.1:1234', 'num_processes': 2, 'process_id': 0}


def test_auto_leaves_unset_fields_to_jax():
  assert distributed.initialize_arguments(DistributedSpec(auto=True), {}) == {
      'coordinator_address': None, 'num_processes': None, 'process_id': None}


def test_incomplete_settings_name_the_fields():
  with pytest.raises(ValueError, match='distributed.num_processes'):
    distributed.initialize_arguments(DistributedSpec(coordinator_address='h:1'), {})
  with pytest.raises(ValueError, match='process_id=2'):
    distributed.initialize_arguments(
        DistributedSpec(coordinator_address='h:1', num_processes=2, process_id=2), {})


def test_one_process_mesh_and_writer():
  distributed.initialize(DistributedSpec(), environ={}, log=lambda _: None)
  assert distributed.is_writer()
  assert distributed.data_mesh().devices.size == 1
  with pytest.raises(ValueError, match='num_devices must be >= 0'):
    distributed.data_mesh(-1)


def test_modes_that_do_not_split_their_work_refuse_several_processes():
  import main  # pylint: disable=g-import-not-at-top
  from configs import vim_t_cifar10  # pylint: disable=g-import-not-at-top
  config = vim_t_cifar10.get_config()
  config.distributed.coordinator_address = '127.0.0.1:1'
  config.distributed.num_processes, config.distributed.process_id = 2, 0
  config.mode = 'quantize'
  with pytest.raises(ValueError, match='mode quantize runs in one process'):
    main.start_processes(config)


def test_local_work_is_this_process_alone():
  """A pipeline run a process claimed: its own devices, its own writes, no waiting."""
  with distributed.local_work():
    assert distributed.process_count() == 1 and distributed.process_index() == 0
    assert distributed.is_writer()
    assert distributed.device_count() == jax.local_device_count()
    assert set(distributed.data_mesh().devices.flat) == set(jax.local_devices())
    distributed.barrier('returns at once')


_WORKER = textwrap.dedent(r"""
    import sys
    import numpy as np
    from ouromamba_jax import distributed
    address, count, pid, out, store_dir, params_file = sys.argv[1:]
    distributed.initialize(distributed.DistributedSpec(
        coordinator_address=address, num_processes=int(count), process_id=int(pid)))
    import flax.serialization
    import jax, jax.numpy as jnp, optax
    from ouromamba_jax import evaluation, quant
    from ouromamba_jax.data import pipeline
    from ouromamba_jax.gen import generator, objective, optimize
    from ouromamba_jax.quant import config as qconfig
    from ouromamba_jax.stages import gen_store
    from tests.gen.conftest import tiny_model, tiny_gen_spec

    model = tiny_model()
    # the test's params (threefry key 0, initialised once by the test: every process the same)
    with open(params_file, 'rb') as f:
      params = jax.tree.map(jnp.asarray, flax.serialization.msgpack_restore(f.read()))
    # 'mean' Δ normalisation: min-max over the nearly equal Δ of a random model amplifies
    # rounding differences (1 / (max - min)) across device counts.
    spec = tiny_gen_spec(num_images=8, images_per_step=4, iterations=3, checkpoint_every=2,
                         delta_normalization='mean')
    step = {}
    if int(pid) <= 0:
      # One Gen step with its 4 images split over this process's devices alone (process 0:
      # its 2, under local_work while process 1 goes on; one process: its 1 device, the program
      # generate() below reuses). The one-device step is the ground truth of the split one.
      with distributed.local_work():
        mesh = optimize.data_mesh(0)
        optimizer = optimize.build_optimizer(spec)
        make = optimize.make_step(objective.generation_model(model, spec), spec, optimizer, mesh)
        keys = jax.device_put(optimize.image_keys(0, np.arange(4)), optimize.batch_sharding(mesh))
        images = optimize.initial_images(keys, (32, 32, 3), 1.0)
        state = optimize.shard_batch_tree(optimize.GroupState(images, optimizer.init(images)),
                                          mesh, 4)
        state, metrics = make(jax.device_put(params, optimize.replicated(mesh)), state,
                              jax.device_put(jnp.arange(4), optimize.batch_sharding(mesh)), keys, 0)
        step = {f'step_{k}': np.asarray(v) for k, v in metrics.items()}
        # Adam's first moment after step 0 is (1 - b1) * gradient: every pixel's gradient
        step['step_mu'] = np.asarray(optax.tree_utils.tree_get(state.opt_state, 'mu'))
        step['step_shards'] = np.asarray([s.data.shape for s in state.images.addressable_shards])
        step['step_split'] = state.images.sharding.spec == jax.sharding.PartitionSpec('data')

    gen = generator.generate(model, params, spec, seed=0,
                             store=gen_store.FolderGroupStore(store_dir))

    # Calibration, data-parallel over every device: micro-batches of 3 rows over 4 devices
    # (padded rows must not count). Two sites per block (in_proj's weight and input, a coarse
    # scale search, one epoch) keep the compiles small; which sites is not what is tested.
    # 6 of the 8 images: two equal micro-batches, so each per-micro-batch program (capture,
    # block forward, training step) compiles for one shape, not two.
    rules = (qconfig.QuantRule(r'layers_\d+/mixer/in_proj/kernel',
                               qconfig.WeightSpec(4, n_grid=8)),
             qconfig.QuantRule(r'layers_\d+/mixer/in_proj/input_quantizer',
                               qconfig.ActSpec(4, outliers='none', n_grid=8)))
    calib = qconfig.QuantSpec('tiny', rules, qconfig.CalibSpec(epochs=1, micro_batch=3))
    qparams, report = quant.quantize(model, params, gen.images[:6], calib, log=lambda _: None)
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(qparams))[0]
    scales = {'q' + jax.tree_util.keystr(p): np.asarray(x, np.float32) for p, x in leaves
              if 'scale' in jax.tree_util.keystr(p)}

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)   # 11: uneven shares
    labels = rng.integers(0, 10, 11).astype(np.int32)
    source = pipeline.EvalSource('random', labels, lambda i: pixels[i], 32,
                                 (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    streamed = evaluation.evaluate_source(model, params, source, batch_size=4)
    arrays = evaluation.evaluate(model, params, gen.images, gen.labels, batch_size=3)
    # the ground truth: logits of the whole set on this process's first device (one jitted
    # forward: op-by-op dispatch compiles every primitive on its own, slower on CPU)
    logits = np.asarray(jax.jit(model.apply)({'params': params}, (pixels / 255 - 0.5) / 0.25))
    np.savez(out, images=gen.images, labels=gen.labels, loss=gen.history[0]['total'],
             top1=streamed['top1'], top5=streamed['top5'], gen_top1=arrays['top1'],
             true_top1=np.mean(logits.argmax(-1) == labels), devices=jax.device_count(),
             writer=distributed.is_writer(), trained=[b['kept'] for b in report['blocks']],
             **step, **scales)
""")

# The whole test's bound (every process is killed past it): generous, as a loaded 2-core
# machine compiles slowly, but finite.
TIMEOUT_ENV = 'OUROMAMBA_TEST_DISTRIBUTED_TIMEOUT_S'


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_all(commands: list[list[str]], envs: list[dict], timeout_s: float
             ) -> list[subprocess.CompletedProcess]:
  """Starts every command at once; kills them all if any is still running after timeout_s."""
  procs = [subprocess.Popen(c, cwd=_REPO, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for c, e in zip(commands, envs)]
  deadline = time.monotonic() + timeout_s
  try:
    outputs = [p.communicate(timeout=max(deadline - time.monotonic(), 1))[0] for p in procs]
  except subprocess.TimeoutExpired as e:
    pytest.fail(f'{e.cmd[3:5]} still running after {timeout_s} s (${TIMEOUT_ENV}): all killed. '
                f'Output:\n{(e.output or b"").decode(errors="replace")[-3000:]}')
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return [subprocess.CompletedProcess(p.args, p.returncode, out) for p, out in zip(procs, outputs)]


def test_two_processes_generate_calibrate_and_evaluate_like_one(tmp_path):
  """One launch: two processes (2 forced CPU devices each, a coordinator on 127.0.0.1) and one
  process on one device, each running the tiny Gen, calibration and evaluation."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=_REPO)
  address = f'127.0.0.1:{_free_port()}'
  out = [str(tmp_path / f'p{i}.npz') for i in range(2)] + [str(tmp_path / 'one.npz')]
  shared, alone = str(tmp_path / 'gen_two'), str(tmp_path / 'gen_one')
  # The tiny Gen model's params, initialised here once (not in each of the three processes).
  model = tiny_model()
  params_file = tmp_path / 'params.msgpack'
  params_file.write_bytes(flax.serialization.msgpack_serialize(jax.device_get(
      jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params'])))
  commands = [[sys.executable, '-c', _WORKER, address, '2', str(i), out[i], shared,
               str(params_file)] for i in range(2)]
  commands.append([sys.executable, '-c', _WORKER, '', '0', '-1', out[2], alone, str(params_file)])
  # The suite's XLA flags (tests/conftest.py: one compute thread per process; three processes
  # share the cores with the other worker) and the forced device count.
  flags = os.environ.get('XLA_FLAGS', '')
  runs = _run_all(commands, [
      dict(env, XLA_FLAGS=f'--xla_force_host_platform_device_count={n} {flags}'.strip())
      for n in (2, 2, 1)], float(os.environ.get(TIMEOUT_ENV, 900)))
  for run in runs:
    assert run.returncode == 0, run.stdout[-5000:]
  two, one = [dict(np.load(p)) for p in out[:2]], dict(np.load(out[2]))
  assert [int(r['devices']) for r in two] == [4, 4] and int(one['devices']) == 1
  assert [bool(r['writer']) for r in two] == [True, False]

  # Gen's step with the batch split over process 0's two devices: each holds 2 of the 4 images
  # (and their Adam moments), and the losses and pixel gradients are the one-device ones.
  split = two[0]
  assert split['step_shards'].tolist() == [[2, 32, 32, 3]] * 2 and bool(split['step_split'])
  assert one['step_shards'].tolist() == [[4, 32, 32, 3]]
  for name in ('total', 'contrastive', 'pse', 'output'):   # the step's loss terms
    np.testing.assert_allclose(split[f'step_{name}'], one[f'step_{name}'], rtol=1e-5,
                               err_msg=name)
  scale = float(np.abs(one['step_mu']).max())
  assert scale > 0
  np.testing.assert_allclose(split['step_mu'], one['step_mu'], rtol=1e-3, atol=1e-5 * scale)
  assert 'step_total' not in two[1]

  # Gen, calibration and evaluation over both processes' four devices give one device's
  for r in two:
    np.testing.assert_array_equal(r['labels'], one['labels'])
    np.testing.assert_allclose(r['loss'], one['loss'], rtol=1e-4)
    # Gen's pixel gradients are summed over the devices in another order than one device sums
    # them, and Adam's steps (about the learning rate whatever a gradient's size) turn an ulp
    # of a near-zero gradient into a step: 1.3e-3 on one 2-core machine (2026-12-06), below 1e-3
    # on another; bounded here relative to the pixels' range.
    pixels = float(np.abs(one['images']).max())
    assert float(np.abs(r['images'] - one['images']).max()) < 1e-3 * max(pixels, 1.0), pixels
    for name in ('top1', 'top5', 'gen_top1'):
      assert float(r[name]) == float(one[name]), name
    assert float(r['top1']) == float(one['true_top1'])
  np.testing.assert_array_equal(two[0]['images'], two[1]['images'])
  # process 0 alone wrote the finished groups, as the one-process run did
  assert sorted(os.listdir(os.path.join(shared, 'groups'))) == sorted(
      os.listdir(os.path.join(alone, 'groups')))

  scales = sorted(k for k in one if k.startswith('q'))
  assert len(scales) == 4 and one['trained'].tolist() == two[0]['trained'].tolist()
  for r in two:
    assert scales == sorted(k for k in r if k.startswith('q'))
    for k in scales:   # data-parallel reconstruction: the same step sizes up to float rounding
      np.testing.assert_allclose(r[k], one[k], rtol=1e-3, atol=1e-6 * np.abs(one[k]).max(),
                                 err_msg=k)
