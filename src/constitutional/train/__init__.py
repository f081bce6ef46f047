"""Training stages of Constitutional AI: SFT, the preference model, DPO, PPO and GRPO.

Heavy dependencies (trl, peft, datasets) are imported when training starts, so importing this
package stays cheap and works without the `train` extra.
"""

import warnings

from constitutional.train.sft import train_sft

# TRL and PEFT still call a transformers property renamed in 5.x; the warning is theirs, not the
# user's, and it repeats at every trainer start.
warnings.filterwarnings(
    "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
)

__all__ = ["train_sft"]
