"""Dense reference formulations (psa's, and a careful torch-sparse one), written apart from
the kernels; the tests and the benchmarks compare affext against them."""
