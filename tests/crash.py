"""The files a process leaves when it is killed in the middle of a checkpoint save."""
import os
import shutil


def plant_unfinished_orbax_save(directory: str, step: int) -> str:
  """What Orbax leaves when killed while saving `step`: the step's files, one cut in half, in
  its temporary folder (`<step>.orbax-checkpoint-tmp-<n>`), never renamed to `<step>`. Made
  from a copy of the newest finished step in `directory`; returns the temporary folder."""
  finished = max(int(n) for n in os.listdir(directory) if n.isdigit())
  tmp = os.path.join(directory, f'{step}.orbax-checkpoint-tmp-1234567')
  shutil.copytree(os.path.join(directory, str(finished)), tmp)
  commit = os.path.join(tmp, 'commit_success.txt')   # written just before the rename
  if os.path.exists(commit):
    os.remove(commit)
  files = [os.path.join(root, f) for root, _, names in os.walk(tmp) for f in names]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, 'r+b') as f:
    f.truncate(os.path.getsize(biggest) // 2)
  return tmp
