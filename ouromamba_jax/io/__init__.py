"""Weight file formats: `.pth` (read without torch) and `.safetensors` <-> Flax params, under the
official names of each family (hustvl Vim, VMamba, MambaVision); damaged and non-finite files."""
from ouromamba_jax.io.families import read_state_dict
from ouromamba_jax.io.hustvl_keys import export_safetensors
from ouromamba_jax.io.hustvl_keys import params_from_file
from ouromamba_jax.io.hustvl_keys import params_from_state_dict
from ouromamba_jax.io.integrity import NonFiniteError
from ouromamba_jax.io.state_dicts import CheckpointMismatchError
