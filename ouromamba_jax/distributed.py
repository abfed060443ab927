"""Several processes (hosts) as one JAX program: initialisation, the writer, the global mesh.

  initialize(DistributedSpec(...))   # once, before any JAX computation (main.py does it)
  mesh = data_mesh()                 # 1-D 'data' mesh over every device of every process
  if is_writer(): write(...)         # shared outputs are written by process 0 only
  host = gather(global_array)        # the whole array on every process, as numpy

Every process runs the same program on the same inputs (the same seed, the same config);
work is split by sharding arrays over the global mesh, so results do not depend on how many
processes there are (up to float rounding across device counts).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from typing import Any, Callable, Mapping, Optional

from absl import logging
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ouromamba_jax.spec_fields import field

DATA_AXIS = 'data'
ENV_ADDRESS, ENV_COUNT, ENV_ID = 'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
  """Several processes or hosts: every process runs the same command (empty = one process)."""
  coordinator_address: str = field(
      '', "host:port of process 0, the same on every process ('' = $JAX_COORDINATOR_ADDRESS; "
      "both empty = one process)")
  num_processes: int = field(0, 'how many processes in all (0 = $JAX_NUM_PROCESSES)')
  process_id: int = field(-1, "this process's index, 0 = the writer (-1 = $JAX_PROCESS_ID)")
  auto: bool = field(
      False, "let JAX detect the cluster (SLURM, Open MPI, Kubernetes, TPU pods): the other "
      'fields may stay empty')
  cpu_collectives: str = field(
      'gloo', 'collectives between CPU processes: gloo | mpi (GPUs use NCCL regardless)')


def initialize_arguments(spec: DistributedSpec, environ: Mapping[str, str] = os.environ
                         ) -> Optional[dict[str, Any]]:
  """The keyword arguments of `jax.distributed.initialize` (None = one process, no call):
  config fields first, then the environment; `auto` leaves the unset ones to JAX."""
  address = spec.coordinator_address or environ.get(ENV_ADDRESS, '')
  count = spec.num_processes or int(environ.get(ENV_COUNT, 0))
  pid = spec.process_id if spec.process_id >= 0 else int(environ.get(ENV_ID, -1))
  if spec.auto:
    return {'coordinator_address': address or None, 'num_processes': count or None,
            'process_id': pid if pid >= 0 else None}
  if not address:
    return None
  if count < 1 or not 0 <= pid < count:
    raise ValueError(
        f'distributed.coordinator_address={address!r} needs distributed.num_processes >= 1 and '
        f'0 <= distributed.process_id < num_processes (or ${ENV_COUNT} / ${ENV_ID}), got '
        f'num_processes={count}, process_id={pid}; or set distributed.auto=True on a cluster '
        'JAX detects.')
  return {'coordinator_address': address, 'num_processes': count, 'process_id': pid}


def initialize(spec: DistributedSpec, environ: Mapping[str, str] = os.environ,
               log: Callable[[str], Any] = logging.info) -> None:
  """Joins the processes (once; a second call only logs) and logs this process's place."""
  kwargs = initialize_arguments(spec, environ)
  if kwargs is not None and not jax.distributed.is_initialized():
    jax.config.update('jax_cpu_collectives_implementation', spec.cpu_collectives)
    jax.distributed.initialize(**kwargs)
    if jax.process_count() > 1 and jax.default_backend() == 'cpu':
      connect_cpu_collectives()
  log(f'[distributed] process {jax.process_index()}/{jax.process_count()}: '
      f'{jax.local_device_count()} of {jax.device_count()} {jax.default_backend()} devices'
      + (f', coordinator {kwargs["coordinator_address"] or "auto-detected"}' if kwargs else ''))


def connect_cpu_collectives() -> None:
  """Sets up the CPU collectives' connections now, while the processes are in step.

  Gloo connects a set of devices at its first collective and gives every process 30 s to get
  there (fixed inside XLA: --xla_cpu_collective_timeout_seconds does not cover it); a process
  still compiling the program on a loaded machine misses that and the run fails with
  'Gloo context initialization failed: DEADLINE_EXCEEDED'. Later collectives of a connected set
  wait for slow processes. So the two device sets this library's collectives use are connected
  here, just after `jax.distributed.initialize` (which returns once every process joined):
  every device (the data meshes of Gen, calibration and evaluation) and one device per process
  (`barrier`, `gather`)."""
  mesh = data_mesh()
  total = jax.jit(jax.shard_map(lambda x: jax.lax.psum(x, DATA_AXIS), mesh=mesh,
                                in_specs=PartitionSpec(DATA_AXIS), out_specs=PartitionSpec()))
  jax.block_until_ready(total(shard_rows(np.ones(mesh.size, np.int32), mesh)))
  multihost_utils.sync_global_devices('ouromamba_jax: CPU collectives connected')


_LOCAL = contextvars.ContextVar('local_work', default=False)


@contextlib.contextmanager
def local_work():
  """Work this process does alone (a pipeline run it claimed while the others do theirs):
  meshes span its own devices, it writes its own outputs, and nothing waits for the others."""
  token = _LOCAL.set(True)
  try:
    yield
  finally:
    _LOCAL.reset(token)


def process_count() -> int:
  """Processes that take part in the current work (1 inside `local_work`)."""
  return 1 if _LOCAL.get() else jax.process_count()


def process_index() -> int:
  return 0 if _LOCAL.get() else jax.process_index()


def device_count() -> int:
  """Devices of the current work's mesh: every process's, or this one's in `local_work`."""
  return jax.local_device_count() if _LOCAL.get() else jax.device_count()


def is_writer() -> bool:
  """Process 0 writes the shared outputs (reports, images, checkpoints' metadata); inside
  `local_work` every process writes its own."""
  return process_index() == 0


def data_mesh(num_devices: int = 0) -> Mesh:
  """1-D 'data' mesh over every device of every process (this process's in `local_work`), or
  the first `num_devices` (one process only: a mesh must include each process's devices for
  all of them to take part)."""
  devices = jax.local_devices() if _LOCAL.get() else jax.devices()
  if num_devices < 0:
    raise ValueError(f'num_devices must be >= 0 (0 = all devices), got {num_devices}')
  if num_devices and process_count() > 1 and num_devices != len(devices):
    raise ValueError(f'num_devices={num_devices} with {jax.process_count()} processes: set it '
                     f'to 0 (all {len(devices)} devices of all processes).')
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f'num_devices={num_devices} but only {len(devices)} local devices exist')
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def gather(x) -> np.ndarray:
  """The whole of `x` as numpy on every process, also when its shards live on other hosts."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def replicate(tree, mesh: Mesh):
  """`tree` (the same values on every process, on any local device) on every mesh device."""
  return jax.device_put(jax.device_get(tree), NamedSharding(mesh, PartitionSpec()))


def shard_rows(x, mesh: Mesh) -> jax.Array:
  """`x` (the whole array on every process, on any local device or host) split by rows over
  the mesh: each local device gets its rows by a local copy, nothing crosses hosts."""
  sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
  pieces = [jax.device_put(x[index], device)
            for device, index in sharding.addressable_devices_indices_map(x.shape).items()]
  return jax.make_array_from_single_device_arrays(x.shape, sharding, pieces)


def local_copy(tree):
  """A replicated global tree as plain (uncommitted) local arrays, like those of one-device
  work: committed ones would recompile every jitted function they meet."""
  return jax.tree.map(lambda a: jax.numpy.asarray(np.asarray(a.addressable_data(0))), tree)


def barrier(name: str) -> None:
  """Waits for every process (no-op with one): readers after the writer's files exist."""
  if process_count() > 1:
    multihost_utils.sync_global_devices(name)
