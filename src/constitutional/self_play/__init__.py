"""Self-play: the model labels its own samples, learns from them by DPO and is scored each round.

It composes labelling (rl_cai), training (train.dpo) and evaluation (eval) the way a recipe
does, so it sits in the layer above the stages and below recipe.

- `loop`: the iterations, their artifacts and resume logic (`run_self_play`).
- `agreement`: the frozen reference judge's labels and their agreement with the self-judge.
"""

from constitutional.self_play.loop import SelfPlayConfig, run_self_play

__all__ = ["SelfPlayConfig", "run_self_play"]
