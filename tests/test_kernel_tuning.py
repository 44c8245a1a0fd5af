"""``--kernels auto``'s timings: a malformed cache is re-timed, and a whole-network verdict is cached only
when its repeats agree on an idle machine (timed here with a fake clock: no test depends on this machine's
speed)."""

import json

import pytest
import torch

from ddpm_lottery.kernels.layers import use_kernels
from ddpm_lottery.kernels.tuning import NETWORK_MARGIN, KernelTuner, network_verdict
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.launch import MachineLoad

pytest.importorskip("numba")

IDLE, BUSY = MachineLoad(0.0, 4), MachineLoad(9.0, 2)


def _pruned_network() -> torch.nn.Module:
    layer = torch.nn.Conv2d(4, 4, 3, padding=1)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.8)
    return torch.nn.Sequential(layer)


class _FakeClock:
    """A clock that moves only when a timed call runs: each call takes the next of ``seconds``."""

    def __init__(self, seconds: list[float]):
        self.now, self.seconds = 0.0, list(seconds)

    def __call__(self) -> float:
        return self.now

    def call(self, *args, **kwargs) -> None:
        self.now += self.seconds.pop(0)


class _Report:
    def run_plain(self, plain: bool) -> None:
        pass


def _rounds(pairs: list[tuple[float, float]]) -> list[float]:
    """A warm-up round, then one (dense, auto) pair of seconds per repeat, in the order they are called."""
    return [1.0, 1.0] + [s for pair in pairs for s in pair]


def _verify(tmp_path, pairs, monkeypatch, load=IDLE):
    monkeypatch.setattr("ddpm_lottery.kernels.tuning.machine_load", lambda: load)
    clock, lines = _FakeClock(_rounds(pairs)), []
    tuner = KernelTuner(tmp_path, repeats=len(pairs), log=lines.append, clock=clock)
    model = _pruned_network()
    use_kernels(model, "sparse")
    verdict = tuner.verify_network(model, (torch.zeros(1, 4, 4, 4),), {}, _Report(), call=clock.call)
    assert clock.seconds == []  # every round ran: warm-up, then the repeats interleaved
    return tuner, verdict, lines


def test_a_network_verdict_whose_repeats_agree_on_an_idle_machine_is_cached(tmp_path, monkeypatch):
    tuner, verdict, lines = _verify(tmp_path, [(0.10, 0.04), (0.12, 0.05), (0.11, 0.04)], monkeypatch)
    assert verdict == "auto" and lines == []
    stored = json.loads(tuner.path.read_text())["layers"]
    (entry,) = stored.values()
    assert entry["kernel"] == "auto" and entry["agreed"] is True
    assert entry["dense_ms"] == pytest.approx(110.0) and entry["sparse_ms"] == pytest.approx(40.0)  # the medians
    assert KernelTuner(tmp_path).entries == stored  # read back by the next command


def test_a_network_verdict_whose_repeats_disagree_is_used_once_and_never_cached(tmp_path, monkeypatch):
    # the case: one disturbed round says 21x, the others say the sparse network is slower
    tuner, verdict, lines = _verify(tmp_path, [(0.414, 0.0197), (0.10, 0.11), (0.10, 0.12)], monkeypatch)
    assert verdict == "dense"  # the medians decide, not the one disturbed round
    assert not tuner.path.exists() and KernelTuner(tmp_path).entries == {}
    assert len(lines) == 1 and "disagree" in lines[0] and "timed again next time" in lines[0]


def test_a_network_timed_on_a_busy_machine_is_said_in_one_line_and_never_cached(tmp_path, monkeypatch):
    tuner, verdict, lines = _verify(tmp_path, [(0.10, 0.04), (0.10, 0.04), (0.10, 0.04)], monkeypatch, load=BUSY)
    assert verdict == "auto" and not tuner.path.exists()
    assert len(lines) == 1 and "busy" in lines[0] and "load average 9.00 on 2 cores" in lines[0]


def test_the_spread_check_puts_every_round_on_the_side_of_the_margin_the_medians_chose():
    fast = 0.9 * NETWORK_MARGIN  # a round where the layers' choices win by more than the margin
    assert network_verdict([1.0, 1.0, 1.0], [fast, fast, fast])["agreed"]
    slower = network_verdict([1.0, 1.0, 1.0], [1.2, 1.1, 1.3])
    assert slower["kernel"] == "dense" and slower["agreed"]
    assert not network_verdict([1.0, 1.0, 1.0], [fast, fast, 1.1])["agreed"]


def _time_layers(folder) -> KernelTuner:
    tuner = KernelTuner(folder, repeats=1)
    model = _pruned_network()
    use_kernels(model, "auto", tuner=tuner)
    with torch.no_grad():
        model(torch.randn(1, 4, 4, 4))
    return tuner


@pytest.mark.parametrize("entry", ["sparse", 3, None, ["dense"], {"kernel": "fast"}, {}])
def test_a_malformed_cache_entry_is_a_missing_entry(tmp_path, entry):
    (key,) = _time_layers(tmp_path).entries  # the very key the layer is looked up by
    old_network = {"kernel": "auto", "dense_ms": 414.0, "sparse_ms": 19.7, "speedup": 21.0}  # no agreement check
    tuner = KernelTuner(tmp_path)
    tuner.path.write_text(
        json.dumps({"machine": tuner.machine, "layers": {key: entry, "network Sequential input": old_network}})
    )
    assert KernelTuner(tmp_path).entries == {}
    again = _time_layers(tmp_path)  # timed anew, and stored over the malformed entry
    assert again.tuned == 1 and again.entries[key]["kernel"] in ("dense", "sparse")
    assert isinstance(json.loads(again.path.read_text())["layers"][key], dict)


def test_a_kernel_cache_on_a_regular_file_names_the_kernel_cache_flag(tmp_path):
    file = tmp_path / "timings.json"
    file.write_text("{}")
    for folder in (file, file / "below"):
        with pytest.raises(UserError, match="--kernel-cache") as caught:
            KernelTuner(folder)
        assert "--out" not in str(caught.value) and str(file) in str(caught.value)
