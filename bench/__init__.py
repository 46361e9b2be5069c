"""Benchmarks: blockmon against QEMU and qemu-img on the shared benchmark chain."""
