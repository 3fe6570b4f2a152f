"""GPU throughput benchmarks for fusion's kernels; each module prints a table and writes CSV + PNG."""
