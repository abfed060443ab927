"""What every checkpoint family shares: quantized params are refused in one clear error."""
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax.io import hustvl_keys
from ouromamba_jax.io import mambavision_keys
from ouromamba_jax.io import vmamba_keys
from ouromamba_jax.quant import qtypes

FAMILIES = [hustvl_keys.FAMILY, vmamba_keys.FAMILY, mambavision_keys.FAMILY]


@pytest.mark.parametrize('family', FAMILIES, ids=lambda f: f.label)
def test_a_quantized_weight_is_refused_naming_its_path(family):
  weight = qtypes.QuantizedWeight(jnp.zeros((3, 2), jnp.int8), jnp.ones((2,), jnp.float32))
  params = {'head': {'kernel': weight, 'bias': np.zeros((2,), np.float32)}}
  with pytest.raises(TypeError, match=r'^param head/kernel holds a QuantizedWeight, not a float '
                                      rf'array; only float \(unquantized\) params map to '
                                      rf'{family.label} checkpoints$'):
    family.state_dict_from_params(params)


@pytest.mark.parametrize('family', FAMILIES, ids=lambda f: f.label)
def test_integer_codes_are_refused_naming_their_dtype(family):
  with pytest.raises(TypeError, match='param head/kernel holds a int8 array, not a float array'):
    family.key_table({'head': {'kernel': np.zeros((3, 2), np.int8)}})
