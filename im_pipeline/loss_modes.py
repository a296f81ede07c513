"""The loss modes: which tokens get loss. The one place they are defined (the config, the masks, the model card,
the report and the CLI read them here), as torchtune's one ``MaskingStrategy`` enum.

``user_weight`` is the weight of user / system content under each mode (λ is the arm's ``prompt_loss_weight``);
assistant content and its EOS always weigh 1; template text weighs 0 except under ``im_release``
(:mod:`im_pipeline.training.masking` has the full table and the token rule).
"""

from __future__ import annotations

from enum import StrEnum

IGNORE_INDEX = -100
"""The label of a position that gets no loss (PyTorch's ``cross_entropy`` default, Hugging Face's convention)."""


class LossMode(StrEnum):
    """Which tokens get loss. The only difference between the arms of an experiment."""

    it = "it"
    im = "im"
    im_release = "im_release"
    weighted = "weighted"

    @property
    def description(self) -> str:
        """What the mode trains on, in words (the model card, the CLI's help)."""
        return _WORDS[self][0]

    @property
    def short(self) -> str:
        """The same in a few words (the report's arms line)."""
        return _WORDS[self][1]

    def user_weight(self, prompt_loss_weight: float | None = None) -> float:
        """Weight of user / system content: 0 (it), 1 (im, im_release) or λ (weighted)."""
        if self is LossMode.weighted:
            if prompt_loss_weight is None:
                raise ValueError("loss mode 'weighted' needs prompt_loss_weight (a value in [0, 1])")
            return float(prompt_loss_weight)
        return 0.0 if self is LossMode.it else 1.0


_WORDS = {
    LossMode.it: ("loss on the outputs only", "loss on outputs"),
    LossMode.im: ("loss on the instructions and the outputs", "loss on instructions and outputs"),
    LossMode.im_release: ("loss on everything but the first user header",) * 2,
    LossMode.weighted: ("instruction tokens weighted by λ", "instruction tokens weighted"),
}
