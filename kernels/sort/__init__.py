"""Sorting kernels: the seed's insertion sort (C++), the base case of the forest's splitter."""

from kernels.sort.ops import insertion_sort

__all__ = ["insertion_sort"]
