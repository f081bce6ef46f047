"""SL-CAI: critique → revision data generation (and, in `constitutional.train`, the SFT step)."""

from constitutional.sl_cai.checks import critique_problem, revision_problem
from constitutional.sl_cai.pipeline import SLConfig, draw_principle, generate_sl_data, to_sft_rows

__all__ = [
    "SLConfig",
    "critique_problem",
    "draw_principle",
    "generate_sl_data",
    "revision_problem",
    "to_sft_rows",
]
