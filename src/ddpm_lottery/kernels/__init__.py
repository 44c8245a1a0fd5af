"""Sparse kernels: a ticket's surviving weights only, computed on the CPU's vector units.

Importing this package is cheap; numba loads when a sparse layer is first installed.
"""
