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
