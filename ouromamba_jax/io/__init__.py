"""Weight file formats: hustvl `.pth` (read without torch) and `.safetensors` <-> Flax params."""
from ouromamba_jax.io.state_dicts import CheckpointMismatchError
from ouromamba_jax.io.hustvl_keys import export_safetensors
from ouromamba_jax.io.hustvl_keys import params_from_file
from ouromamba_jax.io.hustvl_keys import params_from_state_dict
from ouromamba_jax.io.hustvl_keys import read_state_dict
from ouromamba_jax.io.hustvl_keys import state_dict_from_params
from ouromamba_jax.io.integrity import DamagedFileError
from ouromamba_jax.io.integrity import NonFiniteError
from ouromamba_jax.io.pth import load_pth
from ouromamba_jax.io.pth import PthFormatError
from ouromamba_jax.io.pth import UnsafePickleError
