"""The echo canceller / noise suppressor evaluation (bench/aec_eval.py) on three short clips of the clip set."""

from __future__ import annotations

import dataclasses

import pytest

from bench import aec_eval
from bench.aec_filters import RNNoiseSuppressor, SpeexCanceller
from tests import clipset


@pytest.fixture(scope="module")
def specs() -> list[clipset.ClipSpec]:
    all_specs = clipset.clip_specs()
    echo = next(c for c in all_specs if c.kind == "echo" and c.echo_delay_ms == 110 and c.echo_db == -12.0)
    return [dataclasses.replace(echo, seconds=5.0), next(c for c in all_specs if c.kind == "interrupt"),
            next(c for c in all_specs if c.kind == "backchannel")]


def test_detector_alone_removes_no_echo_and_keeps_its_scores(specs):
    row = aec_eval.evaluate_variant(None, specs)
    assert row["erle_converged_db_p50"] == 0.0 and row["erle_db_by_second_p50"] == [0.0] * 5
    assert row["cpu_us_per_frame_p50"] == 0.0
    plain = clipset.evaluate(specs=specs).row()
    assert {k: row[k] for k in plain} == plain


def test_speex_cancels_the_linear_echo_after_converging(specs):
    row = aec_eval.evaluate_variant(SpeexCanceller, specs)
    assert row["echo_calls"] == 1 and row["interrupt_calls"] == 1 and row["backchannel_calls"] == 1
    assert row["erle_converged_db_p50"] > 15.0, row
    assert row["erle_first_second_db_p50"] < row["erle_converged_db_p50"] - 5.0, row
    assert row["missed"] == 0
    assert row["cpu_us_per_frame_p50"] > 0.0


def test_rnnoise_keeps_the_echo_and_the_caller(specs):
    row = aec_eval.evaluate_variant(RNNoiseSuppressor, specs[:2])
    assert abs(row["erle_converged_db_p50"]) < 3.0, row  # the agent's echo is speech: RNNoise lets it through
    assert row["missed"] == 0
