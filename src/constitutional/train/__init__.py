"""Training stages of Constitutional AI: SL-CAI supervised fine-tuning (`train_sft`).

Heavy dependencies (trl, peft, datasets) are imported when training starts, so importing this
package stays cheap and works without the `train` extra.
"""

from constitutional.train.sft import train_sft

__all__ = ["train_sft"]
