"""Checkpoint IO: configs, safetensors headers and memory-mapped weights, folder validation, describe, the tiny checkpoint."""
