"""The method registry: a plain dict from name to method (no import side effects).

Variants are parameters of one implementation, never copies. To add a method, write a
module with a frozen dataclass implementing :class:`methods.base.Method`, add one line here
and one test file (see README, "Adding a method"). External encoders need no line: any
``hear:<module>`` names one (:mod:`methods.hear`).
"""

from dataclasses import dataclass

from methods import hear
from methods.cola import COLA
from methods.msa import MSA
from methods.random_init import RandomInit

METHODS = {
    "random_init": RandomInit(),
    "cola": COLA("cola"),
    "cola_mws": COLA("cola_mws", augment=True),
    "cola_random_mask": MSA("cola_random_mask", separator="random_mask"),
    "msa_bass": MSA("msa_bass", sources=("bass",)),
    "msa_drums": MSA("msa_drums", sources=("drums",)),
    "msa_vocals": MSA("msa_vocals", sources=("vocals",)),
    "msa_other": MSA("msa_other", sources=("other",)),
    "msa_multi": MSA("msa_multi"),
    # The negative control: COLA again, on disjoint pre-training seeds (FAMILIES "controls").
    "cola_twin": COLA("cola_twin", seed_offset=1000),
    # Ablations of msa_multi named in the paper.
    "msa_multi_no_silence": MSA("msa_multi_no_silence", silence=False),
    "msa_multi_mixed_batches": MSA("msa_multi_mixed_batches", homogeneous=False),
    "msa_multi_plain_loss": MSA("msa_multi_plain_loss", loss="plain"),
    "msa_multi_no_shift": MSA("msa_multi_no_shift", time_shift=False),
    # The separator-quality study: msa_multi with other sources, everything else fixed (the
    # configured separator is msa_multi itself, random masks are cola_random_mask).
    "msa_multi_oracle": MSA("msa_multi_oracle", separator="oracle"),
    "msa_multi_umx_short": MSA("msa_multi_umx_short", separator="trained:0.25"),
}

ABLATIONS = (
    "msa_multi_no_silence",
    "msa_multi_mixed_batches",
    "msa_multi_plain_loss",
    "msa_multi_no_shift",
)
# msa_multi under separators of increasing quality: random soft masks, Open-Unmix trained for
# a quarter of separation.train_steps, for all of them (msa_multi), and the true stems.
SEPARATOR_STUDY = ("cola_random_mask", "msa_multi_umx_short", "msa_multi", "msa_multi_oracle")
# The methods whose snapshots the convergence study probes (the paper: MSA against MWS).
CONVERGENCE = ("cola", "cola_mws", "msa_multi")


@dataclass(frozen=True)
class Family:
    """A comparison family: its members are each tested against ``baseline``, with Holm's
    correction within the family (per task and metric); a method joins at most one."""

    baseline: str
    members: tuple[str, ...]


FAMILIES = {
    # The paper's two tables: every method against COLA.
    "paper": Family(
        "cola",
        (
            "cola_mws",
            "cola_random_mask",
            "msa_bass",
            "msa_drums",
            "msa_vocals",
            "msa_other",
            "msa_multi",
        ),
    ),  # fmt: skip
    # The paper's ablations against the model they ablate.
    "ablations": Family("msa_multi", ABLATIONS),
    # The separator-quality study's other separators against the configured one.
    "separators": Family("msa_multi", ("msa_multi_oracle", "msa_multi_umx_short")),
    # Controls of the statistics: the untrained floor must come out below COLA (positive
    # control), COLA trained again under another name must never differ from it (negative).
    "controls": Family("cola", ("random_init", "cola_twin")),
}
CONTROLS = {"positive": "random_init", "negative": "cola_twin"}


def get_method(name: str):
    """The registered method ``name``, or the external encoder ``hear:<module>``; ValueError
    listing the known ones otherwise."""
    if name.startswith(hear.PREFIX):
        return hear.parse(name)
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown method '{name}' (known: {', '.join(METHODS)}, or hear:<module> for an "
            "installed HEAR-API encoder)"
        ) from None
