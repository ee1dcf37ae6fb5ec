"""The module's settings groups refuse out-of-range values when a recipe is read, before any model loads."""

import pytest

from mbpo_lit.fit import main
from mbpo_lit.train.settings import Loss, Optimization, Sampling


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda: Sampling(group_size=1), "sampling.group_size=1: must be >= 2"),
        (lambda: Sampling(top_p=0.0), "top_p=0.0 in \\(0, 1\\]"),
        (lambda: Loss(mu=0), "mu=0 >= 1"),
        (lambda: Loss(beta=-0.1), "beta=-0.1"),
        (lambda: Optimization(lr=-1), "lr=-1 and max_grad_norm=1.0 must be > 0"),
        (lambda: Optimization(accumulate_grad_batches=0), "accumulate_grad_batches >= 1"),
        (lambda: Loss(offline_loss="dpo"), "offline_loss=dpo needs loss.streams=separate"),
        (lambda: Loss(streams="separate", aggregation="dapo"), "streams=separate with loss.aggregation=dapo"),
        (lambda: Loss(streams="both"), "loss.streams='both' must be joint or separate"),
        (lambda: Loss(streams="separate", offline_weight=-1.0), "offline_weight=-1.0 must be >= 0"),
        (lambda: Loss(streams="separate", offline_loss="dpo", dpo_beta=0.0), "dpo_beta=0.0 > 0"),
    ],
)
def test_out_of_range_settings_are_refused_by_name(make, says):
    with pytest.raises(ValueError, match=says):
        make()


def test_a_recipe_with_group_size_1_is_a_one_line_error_before_the_model_loads(capsys, monkeypatch):
    import mbpo_lit.testbed.embedded as embedded

    monkeypatch.setattr(embedded, "prepare", lambda *a: pytest.fail("got as far as preparing the model"))
    with pytest.raises(SystemExit) as exit_:
        main(["--model.sampling.group_size", "1", "--trainer.max_steps", "1"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: sampling.group_size=1: must be >= 2")


def test_dr_grpo_drops_the_std_scaling_and_refuses_it_set_explicitly():
    assert Loss().divides_by_std and Loss(aggregation="bnpo").divides_by_std
    assert not Loss(aggregation="dr_grpo").divides_by_std
    assert not Loss(aggregation="dapo", scale_std=False).divides_by_std
    assert not Loss(aggregation="dr_grpo", scale_std=False).divides_by_std
    with pytest.raises(ValueError, match="aggregation=dr_grpo with loss.scale_std=true"):
        Loss(aggregation="dr_grpo", scale_std=True)
    with pytest.raises(ValueError, match="loss.aggregation='mean': must be one of grpo, bnpo, dapo, dr_grpo"):
        Loss(aggregation="mean")
    with pytest.raises(ValueError, match="top_k=-1 >= 0"):
        Sampling(top_k=-1)
