"""Compile options for tests that run Pallas kernels interpreted (on CPU).

An interpreted kernel is a long unrolled XLA program: on CPU, LLVM's optimisation of it is most
of a check's time (the scan's backward kernel: 2.6 s -> 1.4 s at level 0) and changes none of
the values checked. Elsewhere (a GPU runs the real kernel) the default options stay."""
import jax

CPU_FAST_COMPILE = ({'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu'
                    else None)
