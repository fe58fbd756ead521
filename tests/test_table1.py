"""The Table 1 view: this run's table and tomosift's recorded full-size runs beside it."""

import pytest

from tomosift.table1 import paper_table1, recorded_table1, render_recorded_html


def test_recorded_runs_cover_both_settings_at_the_papers_size():
    recorded = recorded_table1()
    assert set(recorded["setting"]) == {"paper", "realistic"}
    assert (recorded["per_class"] == 1000).all() and (recorded["epochs"] == 20).all()
    assert recorded["accuracy"].between(1 / 23, 1).all()  # above chance, a probability
    realistic = recorded[recorded["setting"] == "realistic"]
    assert realistic["measured_snr"].between(0.01, 0.3).all()
    # the two methods side by side at SNR 0.1 of the paper's setting and every realistic dose
    compared = recorded[(recorded["setting"] == "realistic") | (recorded["level"] == 0.1)]
    for _, group in compared.groupby(["setting", "level"]):
        assert set(group["method"]) >= {"rif-svm", "dsrf3d-bin2"}


def test_recorded_tables_render_with_the_papers_reference():
    recorded = recorded_table1()
    page = render_recorded_html(recorded)
    assert page.count("<table>") == 2
    assert "realistic preset" in page and "measured)" in page
    paper = paper_table1().set_index(["snr", "tilt_max_deg", "method"])["accuracy"]
    row = recorded[(recorded["setting"] == "paper") & (recorded["method"] == "dsrf3d-bin2")].iloc[0]
    reference = paper[(row["level"], 60.0, "dsrf3d")]
    assert f"{row['accuracy']:.3f} ({reference:.3f})" in page
    assert reference == pytest.approx(0.891) or row["level"] != 0.1
