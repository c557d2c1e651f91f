"""Triton kernels of nvae_fast, one module per op (installed as ``nvae_fast.kernels``)."""
