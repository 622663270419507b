"""Structural pruning (Torch-Pruning) and the structure records that let pruned models reload."""

from edgekd.prune._structure import apply_structure, capture_structure

__all__ = ["apply_structure", "capture_structure"]
