"""ouromamba_jax.distributed: the initialize arguments, and Gen, calibration and evaluation on
two localhost processes (2 forced CPU devices each, gloo collectives) equal to one process on
one device."""
import os
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from ouromamba_jax import distributed
from ouromamba_jax.distributed import DistributedSpec

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


_WORKER = textwrap.dedent('''
    import sys
    import numpy as np
    from ouromamba_jax import distributed
    address, count, pid, out, store_dir, calibrate = sys.argv[1:]
    distributed.initialize(distributed.DistributedSpec(
        coordinator_address=address, num_processes=int(count), process_id=int(pid)))
    import jax, jax.numpy as jnp
    from ouromamba_jax import evaluation, quant
    from ouromamba_jax.data import pipeline
    from ouromamba_jax.gen import generator
    from ouromamba_jax.stages import gen_store
    from tests.gen.conftest import tiny_model, tiny_gen_spec

    model = tiny_model()
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
    # 'mean' Δ normalisation: min-max over the nearly equal Δ of a random model amplifies
    # rounding differences across device counts (see tests/gen/test_sharding.py).
    spec = tiny_gen_spec(num_images=8, images_per_step=4, iterations=3, checkpoint_every=2,
                         delta_normalization='mean')
    gen = generator.generate(model, params, spec, seed=0,
                             store=gen_store.FolderGroupStore(store_dir))

    scales = {}
    if calibrate == '1':   # micro-batches of 3 rows over 4 devices: padded rows must not count
      calib = quant.QuantRunSpec(preset='w4a4', epochs=1, micro_batch=3).quant_spec()
      qparams, _ = quant.quantize(model, params, gen.images, calib, log=lambda _: None)
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
             writer=distributed.is_writer(), **scales)
''')


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
    pytest.fail(f'{e.cmd[3:5]} still running after {timeout_s} s: all killed. Output:\n'
                f'{(e.output or b"").decode(errors="replace")[-3000:]}')
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return [subprocess.CompletedProcess(p.args, p.returncode, out) for p, out in zip(procs, outputs)]


def _two_and_one(tmp_path, calibrate: bool, timeout_s: float):
  """(the two processes' results, the one-process one-device result, Gen's store folders)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=_REPO)
  address = f'127.0.0.1:{_free_port()}'
  out = [str(tmp_path / f'p{i}.npz') for i in range(2)] + [str(tmp_path / 'one.npz')]
  stores = str(tmp_path / 'gen_two'), str(tmp_path / 'gen_one')
  flag = str(int(calibrate))
  commands = [[sys.executable, '-c', _WORKER, address, '2', str(i), out[i], stores[0], flag]
              for i in range(2)]
  commands.append([sys.executable, '-c', _WORKER, '', '0', '-1', out[2], stores[1], flag])
  runs = _run_all(commands, [dict(env, XLA_FLAGS=f'--xla_force_host_platform_device_count={n}')
                             for n in (2, 2, 1)], timeout_s)
  for run in runs:
    assert run.returncode == 0, run.stdout[-5000:]
  return [dict(np.load(p)) for p in out[:2]], dict(np.load(out[2])), stores


def test_two_processes_match_one(tmp_path):
  two, one, (shared, alone) = _two_and_one(tmp_path, calibrate=False, timeout_s=240)
  assert [int(r['devices']) for r in two] == [4, 4] and int(one['devices']) == 1
  assert [bool(r['writer']) for r in two] == [True, False]
  for r in two:
    np.testing.assert_array_equal(r['labels'], one['labels'])
    np.testing.assert_allclose(r['loss'], one['loss'], rtol=1e-4)
    assert float(np.abs(r['images'] - one['images']).max()) < 1e-3
    for name in ('top1', 'top5', 'gen_top1'):
      assert float(r[name]) == float(one[name]), name
    assert float(r['top1']) == float(one['true_top1'])
  np.testing.assert_array_equal(two[0]['images'], two[1]['images'])
  # process 0 alone wrote the finished groups, as the one-process run did
  assert sorted(os.listdir(os.path.join(shared, 'groups'))) == sorted(
      os.listdir(os.path.join(alone, 'groups')))


@pytest.mark.slow  # w4a4 calibration compiles for ~100 s per process on 2 shared CPU cores
def test_two_processes_calibrate_like_one(tmp_path):
  two, one, _ = _two_and_one(tmp_path, calibrate=True, timeout_s=600)
  scales = sorted(k for k in one if k.startswith('q'))
  assert scales
  for r in two:
    assert scales == sorted(k for k in r if k.startswith('q'))
    for k in scales:   # data-parallel reconstruction: the same step sizes up to float rounding
      np.testing.assert_allclose(r[k], one[k], rtol=1e-3, atol=1e-6 * np.abs(one[k]).max(),
                                 err_msg=k)
