"""Publishing a dataset folder to the Hugging Face Hub (``push``). The README merge it applies
to the card on the Hub is ``synth_disco.dataset.readme``, the one the card is rendered with."""

from synth_disco.hub.push import HubError, PushResult, push_folder

__all__ = ["HubError", "PushResult", "push_folder"]
