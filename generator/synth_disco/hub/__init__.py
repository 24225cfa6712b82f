"""Publishing a dataset folder to the Hugging Face Hub (``push``) and downloading one at a tag
(``pull``, for ``rebuild``). The README merge push applies to the card on the Hub is
``synth_disco.dataset.readme``, the one the card is rendered with."""

from synth_disco.hub.pull import pull_folder
from synth_disco.hub.push import HubError, PushResult, push_folder

__all__ = ["HubError", "PushResult", "pull_folder", "push_folder"]
