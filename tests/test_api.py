"""The Python API refuses arguments of the wrong type in one line, as the CLI refuses bad flags: never an
AttributeError or a ValueError from deep inside."""

import pytest
import torch

import ddpm_lottery
from ddpm_lottery.config import EvalConfig, RunConfig, SampleConfig
from ddpm_lottery.utils.errors import UserError, require_type


def _one_line(caught) -> str:
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_config_of_another_kind_is_refused_before_anything_is_made(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="find_ticket's config must be LotteryConfig, not a RunConfig") as caught:
        ddpm_lottery.find_ticket(RunConfig(), out)
    _one_line(caught)
    with pytest.raises(UserError, match="train's config must be RunConfig"):
        ddpm_lottery.train(SampleConfig(), out)
    with pytest.raises(UserError, match="tune_range's config must be TuneConfig"):
        ddpm_lottery.tune_range(out, EvalConfig(), tmp_path / "tuned")
    with pytest.raises(UserError, match="frontier's config must be FrontierConfig"):
        ddpm_lottery.frontier([out], EvalConfig())
    assert not out.exists()


def test_sample_and_evaluate_refuse_each_others_config(tiny_ticket_run, tmp_path):
    with pytest.raises(UserError, match="sample's config must be SampleConfig, not an EvalConfig"):
        ddpm_lottery.sample(tiny_ticket_run, EvalConfig(), tmp_path / "samples")
    with pytest.raises(UserError, match="evaluate's config must be EvalConfig or None"):
        ddpm_lottery.evaluate(tiny_ticket_run, SampleConfig())
    with pytest.raises(UserError, match="evaluate's level must be int or None, not '2'"):
        ddpm_lottery.evaluate(tiny_ticket_run, EvalConfig(), levels=["2"])
    assert not (tmp_path / "samples").exists()


@pytest.mark.parametrize("level", ["2", 1.5, True])
def test_a_level_that_is_not_a_level_number_is_one_line(tiny_ticket_run, tmp_path, level):
    with pytest.raises(UserError, match=f"load_network's level must be int or None, not {level!r}"):
        ddpm_lottery.load_network(tiny_ticket_run, level=level)
    with pytest.raises(UserError, match="export's level must be int or None"):
        ddpm_lottery.export(tiny_ticket_run, tmp_path / "export", level=level, log=lambda *_: None)
    assert ddpm_lottery.load_network(tiny_ticket_run, level=2) is not None  # a level number still loads


@pytest.mark.parametrize("module", [None, "runs/demo", torch.zeros(2)])
def test_sparse_kernels_need_a_module(module):
    with pytest.raises(UserError, match="sparse_kernels' module must be Module"):
        ddpm_lottery.sparse_kernels(module)


def test_require_type_names_what_was_given_and_keeps_bools_out_of_ints():
    assert require_type(3, int, "x") == 3 and require_type(None, (int, type(None)), "x") is None
    with pytest.raises(UserError, match="x must be int, not True"):
        require_type(True, int, "x")
    with pytest.raises(UserError, match="x must be int, not a list"):
        require_type(list(range(100)), int, "x")
