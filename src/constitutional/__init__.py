"""constitutional: make a language model harmless from a written constitution.

Constitutional AI (Bai et al. 2022, https://arxiv.org/abs/2212.08073) and its lineage:
critique/revision SFT data, AI-feedback preference labels, evaluation and guards.
"""

__version__ = "0.1.0"
