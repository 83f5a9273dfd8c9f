"""Which MTAT tags belong to which source (bass, drums, vocals, other = accompaniment).

The paper's source-specialisation claim ("Drums -> percussive and rhythmic features (drums,
beat); Accompaniment -> accompanying instruments (violin, piano, guitar)") is tested on the
tags of each source against the others (``reports.studies``). A tag belongs to the sources
whose presence or absence it describes; tags of style, tempo, loudness or mood belong to none.

* :data:`MTAT_TAG_SOURCES`: real MTAT's top 50, our reading of the tag names (README,
  "Source specialisation"). No top-50 tag names the bass.
* :func:`synthetic_tag_sources`: the synthetic corpus, derived from its generator: a tag
  belongs to the stems whose instruments or voices make its concept true
  (:mod:`benchmark.data.synth.music`, ``clip_concepts``); "synth" is made by keyboards and
  pads (other) and by synth basses (bass), so it belongs to both.
"""

from __future__ import annotations

from benchmark.data.datasets import MTAT_TOP50

SOURCES = ("bass", "drums", "vocals", "other")

_VOCAL_TAGS = (
    "vocal", "vocals", "female", "male", "singing", "opera", "woman", "male vocal", "man",
    "choir", "voice", "male voice", "female vocal", "female voice", "choral", "no vocals",
    "no vocal", "no voice",
)  # fmt: skip
_OTHER_TAGS = (
    "guitar", "strings", "piano", "violin", "synth", "harpsichord", "flute", "sitar", "harp",
    "cello",
)  # fmt: skip
MTAT_TAG_SOURCES: dict[str, tuple[str, ...]] = {
    **{tag: ("drums",) for tag in ("drums", "beat", "beats")},
    **{tag: ("vocals",) for tag in _VOCAL_TAGS},
    **{tag: ("other",) for tag in _OTHER_TAGS},
}


def synthetic_tag_sources() -> dict[str, tuple[str, ...]]:
    """Tag -> the stems of the synthetic corpus it describes (top-50 tags only; tags of no
    stem are left out)."""
    from benchmark.data.synth.instruments import KINDS
    from benchmark.data.synth.mtat import SYNONYMS
    from benchmark.data.synth.styles import STYLE_TABLE, VOICES

    concepts: dict[str, set[str]] = {s: set() for s in SOURCES}
    for style in STYLE_TABLE.values():
        for kind, _weight in style["others"]:
            concepts["other"].update(KINDS[kind].tags if kind in KINDS else ())
        for kind, _weight in style["bass"]:
            if kind is not None:
                concepts["bass"].update(KINDS[kind].tags)
    for _kinds, _vibrato, voice_concepts in VOICES.values():
        concepts["vocals"].update(voice_concepts)
    concepts["vocals"].add("no vocals")
    concepts["drums"].update(("drums", "beat", "no beat"))
    out: dict[str, set[str]] = {}
    for source, names in concepts.items():
        for concept in names:
            for tag in SYNONYMS.get(concept, (concept,)):
                if tag in MTAT_TOP50:
                    out.setdefault(tag, set()).add(source)
    return {tag: tuple(s for s in SOURCES if s in out[tag]) for tag in MTAT_TOP50 if tag in out}
