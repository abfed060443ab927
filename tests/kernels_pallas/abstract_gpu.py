"""An abstract H100 for lowering kernels on the CPU: every Pallas op must have a Triton lowering
rule, and a test can check that without a GPU (`lower(lowering_platforms=('cuda',))`)."""
import jax

H100 = jax.sharding.AbstractDevice(device_kind='NVIDIA H100 80GB HBM3', num_cores=132,
                                   platform='cuda')


def abstract_h100():
  """Context in which jitted functions trace and lower for one abstract H100."""
  return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ('x',),
                                                                  abstract_device=H100))
