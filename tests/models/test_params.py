"""Parameter counts: made once per architecture in an offline child process, remembered, never from the Hub."""
import logging
import math

import pytest

from pipeline.models import params
from tests.loopback import FakeHub


def test_counts_are_made_offline_once_and_remembered(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hub_cache"))
    remembered = tmp_path / "counts.json"
    wanted = {"RN50", "xlm-roberta-base-ViT-B-32", "no-such-arch"}
    with FakeHub({}) as hub, caplog.at_level(logging.INFO, logger=params.__name__):
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        counts = params.parameter_counts(wanted, remembered)
        assert hub.requests == []  # the text tower's config is not cached: not counted, and not asked for
    assert counts["RN50"] == pytest.approx(102.007137, abs=1e-6)
    assert math.isnan(counts["xlm-roberta-base-ViT-B-32"]) and math.isnan(counts["no-such-arch"])
    assert caplog.text.count("counting the parameters of 3 architecture(s)") == 1

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=params.__name__):
        again = params.parameter_counts(wanted | {"RN101"}, remembered)
    assert "counting the parameters of 1 architecture(s) once: RN101" in caplog.text  # only the new one
    assert again["RN50"] == counts["RN50"] and again["RN101"] > counts["RN50"]


def test_a_damaged_file_is_counted_again(tmp_path):
    remembered = tmp_path / "counts.json"
    remembered.write_text("{not json")
    assert params.parameter_counts({"RN50"}, remembered)["RN50"] == pytest.approx(102.007137, abs=1e-6)
    assert "RN50" in remembered.read_text()
