"""Support shared by the test suite and the benchmarks (not needed to use the library).

- ``official``, ``official_supervised``, ``official_two_tower``, ``official_spectrum``: independent
  transcriptions of each loss's official formula (the test oracle and the benchmarks' "eager" provider).
- ``csim``: builds the CPU simulator of the CUDA extension from a source checkout's csrc/.
- ``triton_aot``: compiles the Triton kernels for a GPU target without a GPU (kernel report, compile
  check, host-overhead benchmark); import it without TRITON_INTERPRET=1.
"""
