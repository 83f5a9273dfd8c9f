"""reports.compare on small hand-made tables: seed summaries, ranks and missing results."""

from __future__ import annotations

import pandas as pd
import pytest

from reports.compare import missing_results, summarise


def test_summarise_and_missing_results_on_a_small_table():
    scores = pd.DataFrame(
        {
            "method": ["a", "a", "b", "b", "b"],
            "task": ["t", "t", "t", "t", "u"],
            "seed": [0, 1, 0, 1, 0],
            "metric": ["accuracy"] * 5,
            "value": [0.5, 0.7, 0.8, 0.8, 0.1],
        }
    )
    summary = summarise(scores).set_index(["method", "task"])
    assert summary.loc[("a", "t"), "mean"] == pytest.approx(0.6)
    assert summary.loc[("b", "t"), "rank"] == 1 and summary.loc[("a", "t"), "rank"] == 2
    lines = missing_results(scores, ["a", "b", "c"], ["t", "u"], {"t": "accuracy", "u": "roc_auc"})
    assert "a × u: no results" in lines
    assert "c × t: no results" in lines
    assert "b × u: primary metric roc_auc missing" in lines
    with pytest.raises(ValueError, match="duplicate"):
        summarise(pd.concat([scores, scores.iloc[:1]]))
    with pytest.raises(ValueError, match="lacks columns"):
        summarise(scores.drop(columns="seed"))
