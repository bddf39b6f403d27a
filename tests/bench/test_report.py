"""The report's engine figures: each says which way is better, so the advantage reads the same for all."""

from __future__ import annotations

import pytest

from bench.report import EngineFigure


@pytest.mark.parametrize(
    "figure, advantage",
    [
        pytest.param(EngineFigure("req/s", onnxruntime=100.0, auto=400.0), 4.0, id="higher-is-better"),
        pytest.param(EngineFigure("p50 ms", onnxruntime=8.0, auto=10.0, lower_is_better=True), 0.8, id="lower"),
    ],
)
def test_an_advantage_above_one_favours_auto_whichever_way_the_figure_goes(figure, advantage):
    assert figure.advantage == pytest.approx(advantage)
