"""Adapters between the voxloop framework and the outside world (one subpackage each)."""
