"""Test-wide settings: one intra-op thread, which makes the tiny test networks several times faster on small CPUs."""
import torch

torch.set_num_threads(1)
