"""voxloop tests."""
