"""Moved to `sdift_prob.training.checkpoint` (one-file checkpoints of every training run); kept so
that existing imports keep working."""

from ..training.checkpoint import FORMAT_VERSION as FORMAT_VERSION
from ..training.checkpoint import load_checkpoint as load_checkpoint
from ..training.checkpoint import package_versions as package_versions
from ..training.checkpoint import read_header as read_header
from ..training.checkpoint import save_checkpoint as save_checkpoint
from ..training.checkpoint import write_tree_file as write_tree_file
