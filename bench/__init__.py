"""Benchmarks: blockmon against QEMU and qemu-img on the benchmark chain (bench/make_chain.py)."""
