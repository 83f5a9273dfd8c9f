"""reports.figures: a figure without usable data raises FigureDataError; one with data is a PNG."""

from __future__ import annotations

import pandas as pd
import pytest

from reports import figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_figure_functions_raise_figure_data_error(tmp_path):
    with pytest.raises(figures.FigureDataError):
        figures.pretraining_figure(None, tmp_path / "x.png")
    with pytest.raises(figures.FigureDataError, match="chance"):
        curves = pd.DataFrame(
            dict(method=["cola"], seed=[0], step=[1], metric=["loss"], value=[3.0])
        )
        figures.pretraining_figure(curves, tmp_path / "x.png")
    with pytest.raises(figures.FigureDataError, match="baseline"):
        per_tag = pd.DataFrame(
            dict(method=["msa_bass"], task=["mtat"], seed=[0], tag=["x"], pr_auc=[0.1])
        )
        figures.tagwise_figure(per_tag, tmp_path / "x.png")
    quality = pd.DataFrame(
        dict(
            separator=["umx", "umx", "oracle"],
            source=["bass", "drums", "bass"],
            si_sdr=[3.0, 5.0, 20.0],
        )
    )
    path = figures.separation_quality_figure(quality, tmp_path / "q.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
