"""Pure Python / NumPy / PyTorch references: the executable specification of every kernel.

Mirrors ``kernels/`` by domain. Imports no numba, triton or compiled code, so it runs anywhere.
"""
