"""What a training step logs: the zero-signal share and gradient norm by hand, the sample table in TensorBoard and
W&B (offline) read back from their files, and in a short fit every documented key logged and the progress bar's."""

import json
import os
import re
from pathlib import Path

import pytest
import torch
from test_fit import tiny_config, world, write_config

from mbpo_lit.fit import main
from mbpo_lit.train.samples import log_samples
from mbpo_lit.train.step_logs import PROGRESS_BAR, gradient_norm, loss_scale, zero_signal_share

ROWS = [
    {"step": 3, "question": "What colour is the ball?", "answer": "red", "completion": "red | blue", "reward": 1.5},
    {"step": 3, "question": "What colour is the cup?", "answer": "blue", "completion": "green", "reward": 0.0},
]


def test_zero_signal_share_counts_groups_whose_rewards_all_tie():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 2.0, 2.0])  # groups of 2: tie, differ, tie, tie
    assert zero_signal_share(rewards, 2) == 0.75
    assert zero_signal_share(rewards, 4) == 0.0


def test_gradient_norm_is_the_total_norm_of_the_gradients_that_exist():
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])
    assert gradient_norm([a, b, c]) == pytest.approx(5.0)
    assert gradient_norm([c]) == 0.0


@pytest.mark.parametrize("scale", [1.0, 1024.0])
def test_under_a_loss_scale_the_step_logs_and_clips_the_true_gradients(scale, tiny_pairs):
    """fp16-mixed's gradient scaler leaves the gradients multiplied by its scale until the optimizer step unscales
    them, after the module's manual clip (a CPU cannot run fp16-mixed, so its plugin is built by hand around a
    CPU scaler). Gradients of true norm 5 are logged as 5 and clipped to `max_grad_norm` 1 in true units, as
    without a scaler; clipping the scaled ones to 1 would shrink the step by the scale."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import MixedPrecision
    from test_module import module

    from mbpo_lit.vlm.policy import trainable_parameters

    scaler = torch.amp.GradScaler("cpu", init_scale=scale, enabled=scale != 1.0)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    assert loss_scale(SimpleNamespace(precision_plugin=plugin)) == scale and loss_scale(None) == 1.0
    m = module(tiny_pairs[0])
    m.configure_model()
    m._trainer = SimpleNamespace(
        precision_plugin=plugin, gradient_clip_val=None, gradient_clip_algorithm=None, lr_scheduler_configs=[]
    )
    params = list(trainable_parameters(m).values())
    true = [torch.randn_like(p) for p in params]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in true]))
    for p, g in zip(params, true):
        p.grad = g * (5.0 / norm) * scale  # true norm 5, as the scaler leaves them

    stepped: list[torch.Tensor] = []
    opt = SimpleNamespace(
        param_groups=[{"params": params, "lr": 0.1}],
        step=lambda: stepped.extend(p.grad / scale for p in params),  # the step unscales
        zero_grad=lambda: None,
    )
    m._optimizer_step(opt)
    assert m._last_grad_norm == pytest.approx(5.0, rel=1e-4)
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in stepped]))
    assert clipped.item() == pytest.approx(m.optim.max_grad_norm, rel=1e-3)


def test_the_sample_table_reaches_tensorboard(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path)
    log_samples([CSVLogger(tmp_path / "csv"), logger], ROWS, step=3)  # CSV has no place for it: skipped
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    (event,) = events.Tensors("samples/text_summary")
    text = event.tensor_proto.string_val[0].decode()
    assert event.step == 3 and "| question | answer | completion | reward |" in text
    assert "| What colour is the ball? | red | red \\| blue | 1.5 |" in text  # a "|" in a cell is escaped


def test_the_sample_table_reaches_weights_and_biases_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=tmp_path, offline=True, project="mbpo-test")
    log_samples([logger], ROWS, step=3)
    logger.experiment.finish()
    (table,) = Path(tmp_path).rglob("samples_*.table.json")
    saved = json.loads(table.read_text())
    assert saved["columns"] == list(ROWS[0]) and [r[1] for r in saved["data"]] == [r["question"] for r in ROWS]


# Every key the metrics reference lists for a GRPO step, in the logs of a 2-step fit.
def documented_keys() -> set[str]:
    text = (Path(__file__).parents[1] / "docs" / "reference" / "metrics.md").read_text()
    section = text.split("## Training: every step (`fit`, `loss.kind: grpo`)", 1)[1].split("\n## ", 1)[0]
    first_cells = re.findall(r"^\| (`[^|]+`) \|", section, flags=re.M)
    return {k for cell in first_cells for k in re.findall(r"`([^`<>]+)`", cell)}


def test_a_fit_logs_every_documented_key_and_shows_reward_accuracy_and_kl_in_the_progress_bar(tiny_pairs, tmp_path):
    path, pairs = tiny_pairs
    config = tiny_config(path, pairs, tmp_path, {"online": world(["train"], 8), "val": None})
    config["trainer"]["log_every_n_steps"] = 1
    config["model"]["evaluate_after_fit"] = False
    cli = main(["--config", write_config(tmp_path, config)])
    assert set(PROGRESS_BAR) <= set(cli.trainer.progress_bar_metrics)
    header = next(tmp_path.rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    expected = documented_keys() | {f"online/reward_{k}" for k in ("accuracy", "format", "length")}
    assert expected and expected <= set(header), sorted(expected - set(header))
    assert {"lr", "grad_norm", "online/zero_signal_groups", "perf/peak_memory_gb"} <= expected
    assert os.path.getsize(next(tmp_path.rglob("metrics.csv"))) > 0
