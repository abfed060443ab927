"""atomic: a writer killed mid-write leaves the old file, and its temporary is cleaned up later."""
import os
import signal
import subprocess
import sys

from ouromamba_jax.io import atomic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_then_die(path: str) -> subprocess.CompletedProcess:
  """A process SIGKILLed inside atomic_path, after writing half of the new content."""
  code = ('import os, signal\n'
          'from ouromamba_jax.io import atomic\n'
          f'with atomic.atomic_path({path!r}) as tmp, open(tmp, "wb") as f:\n'
          '  f.write(b"half of the new"); f.flush()\n'
          '  os.kill(os.getpid(), signal.SIGKILL)\n')
  return subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=False,
                        env={**os.environ, 'PYTHONPATH': ROOT})


def test_a_kill_mid_write_keeps_the_old_file_and_the_next_run_removes_its_temporary(tmp_path):
  target = tmp_path / 'sub' / 'result.json'
  atomic.write_json(target, {'old': True})
  proc = _write_then_die(str(target))
  assert proc.returncode == -signal.SIGKILL
  stale = [p for p in os.listdir(target.parent) if p.endswith('.tmp')]
  assert len(stale) == 1 and stale[0].startswith('.result.json.')
  assert atomic.read_json(target) == {'old': True}
  removed = atomic.remove_stale_temporaries(tmp_path)
  assert removed == [str(target.parent / stale[0])]
  assert os.listdir(target.parent) == ['result.json']
  assert atomic.read_json(target) == {'old': True}


def test_only_the_names_of_killed_writers_are_removed(tmp_path):
  orbax_tmp = tmp_path / 'checkpoints' / '12.orbax-checkpoint-tmp-1234567'
  (orbax_tmp / 'default').mkdir(parents=True)
  (orbax_tmp / 'default' / 'data').write_bytes(b'half')
  kept = ['checkpoints/12/data', 'model.tmp', '.hidden.tmp', 'notes.12345678.tmp',
          'groups/group_0000.npz', 'checkpoints/orbax-checkpoint-tmp-1/x']
  for name in kept:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b'valid')
  stale_file = tmp_path / 'groups' / '.group_0001.npz.k3j_9xq2.tmp'
  stale_file.write_bytes(b'half')
  assert atomic.remove_stale_temporaries(tmp_path) == sorted([str(orbax_tmp), str(stale_file)])
  assert not orbax_tmp.exists() and not stale_file.exists()
  assert all((tmp_path / name).read_bytes() == b'valid' for name in kept)
  assert atomic.remove_stale_temporaries(tmp_path) == []
