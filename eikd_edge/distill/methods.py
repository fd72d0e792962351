"""The distillation methods, one declarative entry each: how the method picks its training images, which loss terms
it trains with, which trainable extras it needs, and (derived from those) which recipe settings it reads.

Read by the recipe validator (config.py: the method names, and settings a method ignores are refused), selection
(selection.select), the loss mix (training.distillation_loss) and the trainable module (training.DistillNet).
Adding a method is one entry here plus any loss function it needs in losses.py.

ODSD (`selection.sampler=odsd`) is the `odsd` switch of a method's entry; CuDFKD's self-paced curriculum
(`train.curriculum.mode`) and transfer-set synthesis (`synthesis.count`) work with every method, so no entry names
them. Nothing here imports torch: the command line reads the names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

SelectionStrategy = Literal["whole_pool", "class_balanced", "random_same_size", "global_top_confidence"]


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    # whole_pool: every open pool image; class_balanced: each class's top-scored share (EIKD §3.1);
    # random_same_size: a random subset as large as class_balanced's; global_top_confidence: as large, by confidence
    selection: SelectionStrategy
    odsd: bool = False  # selection.sampler=odsd samples by closeness to the teacher's data (else top-scored)
    class_drop: bool = False  # class-drop KD (loss.class_drop); False: plain Hinton KD
    feature: bool = False  # the feature loss α·L_feat (loss.feature)
    relation: bool = False  # the relation loss β·L_rel (loss.relation)
    noise_adaptation: bool = False  # DFND's trainable noise transition, and its loss term

    @property
    def score_kind_fixed(self) -> str | None:
        """The in-distribution score the method always ranks by, whatever selection.score says (None: the setting)."""
        return "confidence" if self.selection == "global_top_confidence" else None

    @property
    def sized_like_class_balanced(self) -> bool:
        """The subset is as large as the class-balanced choice would be (so it reads the settings that size it)."""
        return self.selection != "whole_pool"

    def samples_by_odsd(self, sampler: str) -> bool:
        """Whether selection uses ODSD's sampled closeness (and so needs the teacher's BatchNorm distances)."""
        return self.odsd and sampler == "odsd"

    def reads(self, setting: str) -> bool:
        """Whether a dotted recipe setting of `SETTINGS` changes what this method does."""
        return SETTINGS[setting](self)

    def uses_projector(self, feature_enabled: bool, relation_enabled: bool, relation_kind: str) -> bool:
        """The feature loss and the contrastive relation both compare g(f_S) with the teacher's embedding."""
        contrastive = self.relation and relation_enabled and relation_kind == "contrastive"
        return (self.feature and feature_enabled) or contrastive


# Settings that only some methods read, in the order a refusal names them: a method that does not read one must
# leave it at its default, or the user is misled.
SETTINGS: dict[str, Callable[[Method], bool]] = {
    "selection.sampler": lambda m: m.odsd,
    "selection.odsd_temperature": lambda m: m.odsd,
    "selection.score": lambda m: m.sized_like_class_balanced and m.score_kind_fixed is None,
    "selection.keep_fraction": lambda m: m.sized_like_class_balanced,
    "selection.balance": lambda m: m.sized_like_class_balanced,
    "selection.dedup_threshold": lambda m: m.sized_like_class_balanced,
    "loss.class_drop": lambda m: m.class_drop,
    "loss.feature": lambda m: m.feature,
    "loss.relation": lambda m: m.relation,
}

_EIKD_LOSSES = {"class_drop": True, "feature": True, "relation": True}

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "eikd",
            "class-balanced selection (ODSD-sampled or top-scored) with class-drop KD, feature and relation losses",
            "class_balanced",
            odsd=True,
            **_EIKD_LOSSES,
        ),
        Method("kd", "Hinton KD on the whole pool", "whole_pool"),
        Method(
            "random",
            "EIKD's losses on a random subset of EIKD's size (the selection ablation)",
            "random_same_size",
            **_EIKD_LOSSES,
        ),
        Method(
            "dfnd",
            "global top-confidence subset of EIKD's size, KD plus a trainable noise transition",
            "global_top_confidence",
            noise_adaptation=True,
        ),
    )
}
