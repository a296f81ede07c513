"""The loss modes: which tokens get loss, and :class:`LossSpec`, an arm's whole loss. The one place they are defined
(the config, the masks, the trainer, the model card, the report and the CLI read them here), as torchtune's one
``MaskingStrategy`` enum.

``user_weight`` is the weight of user / system content under each mode (λ is the arm's ``prompt_loss_weight``);
assistant content and its EOS always weigh 1; template text weighs 0 except under ``im_release``
(:mod:`im_pipeline.training.masking` has the full table and the token rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

IGNORE_INDEX = -100
"""The label of a position that gets no loss (PyTorch's ``cross_entropy`` default, Hugging Face's convention)."""

KL_FORMS = ("full", "release")
"""``full``: KL(model ‖ base) over the whole next-token distribution (paper Eq. 5); ``release``: the released code's
``log p_θ(y) − log p_ref(y)`` at the target token
(:meth:`im_pipeline.training.weighted_trainer.WeightedLossTrainer._kl_term`)."""


class LossMode(StrEnum):
    """Which tokens get loss. The only difference between the arms of an experiment."""

    it = "it"
    im = "im"
    im_release = "im_release"
    weighted = "weighted"
    it_w = "it_w"

    @property
    def description(self) -> str:
        """What the mode trains on, in words (the model card, the CLI's help)."""
        return _WORDS[self][0]

    @property
    def short(self) -> str:
        """The same in a few words (the report's arms line)."""
        return _WORDS[self][1]


_WORDS = {
    LossMode.it: ("loss on the outputs only", "loss on outputs"),
    LossMode.im: ("loss on the instructions and the outputs", "loss on instructions and outputs"),
    LossMode.im_release: ("loss on everything but the first user header",) * 2,
    LossMode.weighted: ("instruction tokens weighted by λ", "instruction tokens weighted"),
    LossMode.it_w: (
        "loss on the outputs only, each example's divided by its im_release target count (IM's output weighting)",
        "loss on outputs, IM's weight",
    ),
}


@dataclass(frozen=True)
class LossSpec:
    """An arm's loss, checked once when built (an ``ArmConfig`` builds its own when validated: ``arm.loss``): the mask
    (``mode``), λ for ``weighted`` and the KL term to the frozen base model. Masking, loss and trainer take it as is.
    """

    mode: LossMode
    prompt_loss_weight: float | None = None
    kl_coef: float = 0.0
    kl_form: Literal["full", "release"] = "full"

    def __post_init__(self) -> None:
        if not isinstance(self.mode, LossMode):
            raise TypeError(f"LossSpec.mode must be a LossMode, got {self.mode!r}")
        lam = self.prompt_loss_weight
        if self.mode is LossMode.weighted:
            if lam is None:
                raise ValueError("loss_mode 'weighted' needs prompt_loss_weight (a value in [0, 1])")
            if not 0.0 <= lam <= 1.0:
                raise ValueError(f"prompt_loss_weight must be in [0, 1], got {lam}")
        elif lam is not None:
            raise ValueError(f"prompt_loss_weight is only used with loss_mode 'weighted' (this arm has '{self.mode}')")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.kl_form not in KL_FORMS:
            raise ValueError(f"kl_form must be one of {KL_FORMS}, got {self.kl_form!r}")
        if self.mode is LossMode.it_w and self.kl_coef > 0:
            raise ValueError("loss_mode 'it_w' takes no KL term (its per-example scale is defined for the NLL only)")

    @property
    def user_weight(self) -> float:
        """Weight of user / system content: 0 (it, it_w), 1 (im, im_release) or λ (weighted)."""
        if self.mode is LossMode.weighted:
            return float(self.prompt_loss_weight)  # type: ignore[arg-type]  # checked in __post_init__
        return 0.0 if self.mode in (LossMode.it, LossMode.it_w) else 1.0


OUTPUT_ONLY = LossSpec(LossMode.it)
"""The IT mask (assistant content + EOS): held-out loss, ``it_weights``, every arm's output-token loss."""
