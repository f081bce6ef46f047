"""RL-CAI: AI-feedback preference labels (Bai et al. 2022, section 4)."""

from constitutional.judge.human import load_human_prefs
from constitutional.judge.labels import (
    clamp,
    flip,
    swap_average,
    to_dpo_rows,
    two_way_softmax,
    unswap,
)
from constitutional.judge.layout import draw_principles
from constitutional.rl_cai.label import LabelConfig, label_pairs, mix_human

__all__ = [
    "LabelConfig",
    "clamp",
    "draw_principles",
    "flip",
    "label_pairs",
    "load_human_prefs",
    "mix_human",
    "swap_average",
    "to_dpo_rows",
    "two_way_softmax",
    "unswap",
]
