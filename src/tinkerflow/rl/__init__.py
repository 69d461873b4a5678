"""Reinforcement learning: records and pure steps (this package), rollouts and loops in :mod:`tinkerflow.shell`."""
