"""TrainSpec: values that would be accepted but silently break training are refused."""
import pytest

from ouromamba_jax.train.spec import TrainSpec


def test_grad_clip_zero_is_refused_naming_the_field():
  with pytest.raises(ValueError, match=r'^train\.grad_clip must be > 0, got 0\.0 \(0 clips every '
                                       r'update to zero, so training silently stops learning\)\.$'):
    TrainSpec(grad_clip=0.0)
  assert TrainSpec().grad_clip == 1.0
