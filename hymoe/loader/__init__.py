"""Checkpoint readers: a directory or file -> named tensors, memory-mapped."""
