"""The shipped networks' recipes (Tools/train_dl.py, Tools/train_ddl.py): their defaults are the
documented recipe, and the card says how the training ended."""
import sys
import types
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "Tools"
sys.path.insert(0, str(TOOLS))

import networks  # noqa: E402
import train_ddl  # noqa: E402
import train_dl  # noqa: E402


def _defaults(recipe, monkeypatch):
    """The recipe's parsed command line without arguments (argparse defaults)."""
    captured = {}

    def run(args, *_, **__):
        captured["args"] = args
        return 0

    monkeypatch.setattr(recipe.shipping, "run", run)
    recipe.main([])
    return captured["args"]


def test_dl_recipe_defaults_are_the_fixed_schedule(monkeypatch):
    args = _defaults(train_dl, monkeypatch)
    assert args.steps == train_dl.RECIPE_STEPS > 0
    assert args.minutes == 0                       # no wall-clock budget: the schedule is the recipe
    assert args.converge is False
    assert args.weight_average == train_dl.WEIGHT_AVERAGE
    assert args.split_seed == 0 and args.seed == 0  # every seed trains on the same cubes


def test_ddl_recipe_defaults_are_a_step_schedule_that_stops_at_convergence(monkeypatch):
    args = _defaults(train_ddl, monkeypatch)
    assert args.steps == train_ddl.RECIPE_STEPS > 0
    assert args.minutes == 0                       # the busy machine does not change the schedule
    assert args.converge is True
    assert args.lr == train_ddl.FINE_TUNE_LR       # started from the shipped IQT-DL by default
    assert args.init_from.endswith("dl_t1_x4.iqtm")
    assert args.split_seed == 0 and args.seed == 0


def _model(**training):
    record = dict(data="d", simulation={}, steps=10, patches_seen=40, wall_seconds=1.0, device="cpu", threads=1,
                  torch_version="x", seed=3, validation_patches=504, selected_step=10,
                  settings=dict(lr=5e-4, split_seed=0, weight_average=0.0))
    record.update(training)
    return types.SimpleNamespace(training=record, params={})


@pytest.mark.parametrize("record, says", [
    (dict(stopped_at_convergence=True, converged=True), "stopped at convergence;"),
    (dict(stopped_at_convergence=False, converged=True), "end of its schedule (converged:"),
    (dict(stopped_at_convergence=False, converged=False), "end of its schedule (not converged:"),
])
def test_card_says_how_training_ended(record, says):
    lines = networks.training_lines(_model(**record))
    assert says in lines[2]
    assert "split seed 0" in lines[3]


def test_card_says_when_the_training_seed_chose_the_cubes():
    model = _model()
    model.training["settings"]["split_seed"] = -1
    assert "chosen by the training seed" in networks.training_lines(model)[3]
