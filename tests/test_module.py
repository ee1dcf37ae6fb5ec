"""Hybrid GRPO in Lightning on the tiny checkpoint: a short 4-bit LoRA fit, checkpoints, NaN stop, bad data."""

import dataclasses

import lightning as L
import pytest
import torch
from datasets import load_from_disk

from mbpo_lit.core.grpo import grpo_loss
from mbpo_lit.core.rewards import Reward
from mbpo_lit.data.hybrid import HybridDataModule
from mbpo_lit.testbed.questions import build_records
from mbpo_lit.testbed.world import WorldConfig
from mbpo_lit.testbed.world_source import WorldSource
from mbpo_lit.train.module import MBPOModule
from mbpo_lit.train.settings import Loss, Optimization, Rewards, Sampling
from mbpo_lit.vlm.policy import (
    LoraSettings,
    ModelConfig,
    load_policy,
    reference_mode,
    save_adapter,
    trainable_parameters,
)

WORLD = WorldConfig(image_size=56)


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Trainers here have no default_root_dir: their logs and the adapter written at the end go to tmp_path."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def setup(tiny_pairs):
    return tiny_pairs


def module(path, loss: dict | None = None, optim: dict | None = None, sample_table_every: int = 0) -> MBPOModule:
    """The tiny 4-bit module; `loss` and `optim` override fields of those settings groups."""
    cfg = ModelConfig(
        path, precision="fp32", quantization="4bit", lora=LoraSettings(r=4, alpha=8, dropout=0.0), device="cpu"
    )
    return MBPOModule(
        cfg,
        Sampling(group_size=2, max_new_tokens=4),
        Loss(**({"beta": 0.04, "mu": 2} | (loss or {}))),
        Rewards(vocabulary=WORLD.colors),
        Optimization(**({"lr": 1e-2} | (optim or {}))),
        sample_table_every=sample_table_every,
    )


def datamodule(pairs, **kw):
    kw = (
        dict(
            pairs=pairs,
            online=WorldSource(["train"], 8, world=WORLD),
            offline_per_batch=1,
            online_per_batch=1,
            batches_per_epoch=4,
            val_n=2,
        )
        | kw
    )
    return HybridDataModule(**kw)


def test_short_4bit_fit_changes_only_adapters(setup):
    path, pairs = setup
    m = module(path)
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(m, datamodule(pairs))
    base = load_policy(ModelConfig(path, precision="fp32", quantization="4bit", lora=None, device="cpu")).model
    base_params = dict(base.named_parameters())
    for name, p in m.model.named_parameters():
        if "lora_" in name:
            if "lora_B" in name:
                assert p.abs().sum() > 0, f"{name} did not train"
        else:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p.data, base_params[key].data), f"base parameter {name} changed"
    assert {"loss", "kl", "clip_fraction", "online/reward_mean", "offline/reward_mean"} <= set(trainer.logged_metrics)


def test_checkpoint_holds_adapters_and_optimizer_only(setup, tmp_path):
    path, pairs = setup
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        callbacks=[ckpt],
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module(path, {"mu": 1, "beta": 0.0}), datamodule(pairs))
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert state["state_dict"] and all("lora_" in k for k in state["state_dict"])
    assert state["optimizer_states"]
    # Resuming restores them into a freshly built 4-bit model.
    trainer2 = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    m2 = module(path, {"mu": 1, "beta": 0.0})
    trainer2.fit(m2, datamodule(pairs), ckpt_path=str(tmp_path / "last.ckpt"))
    assert trainer2.global_step == 2


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(setup, tmp_path):
    path, pairs = setup
    m = module(path, {"mu": 1, "beta": 0.0})
    calls = {"n": 0}

    class Poisoned(Reward):
        def __call__(self, prompts, completions, records):
            calls["n"] += 1
            return [float("nan") if calls["n"] > 1 else 1.0 for _ in completions]

    m.rewards["accuracy"] = Poisoned()
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        callbacks=[ckpt],
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(FloatingPointError, match="non-finite GRPO loss .* at step 1"):
        trainer.fit(m, datamodule(pairs))
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert state["global_step"] == 1 and all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_bad_records_are_reported_and_skipped_or_rejected(setup, tmp_path):
    _, pairs = setup
    data = load_from_disk(pairs)
    bad = data.map(lambda r, i: {"chosen": [] if i == 1 else r["chosen"]}, with_indices=True)
    # Pair 2's rejected answer is its chosen one, worded differently ("Red." for "red").
    text = data[2]["chosen"][0]["content"][0]["text"]
    same = [{"role": "assistant", "content": [{"type": "text", "text": f" {text.upper()}."}]}]
    bad = bad.map(lambda r, i: {"rejected": same if i == 2 else r["rejected"]}, with_indices=True)
    bad.save_to_disk(str(tmp_path / "bad"))
    dm = datamodule(str(tmp_path / "bad"))
    dm.setup("fit")
    assert [(s["index"], s["reason"]) for s in dm.skipped] == [
        (1, "missing answer"),
        (2, "rejected answer equals the chosen one"),
    ]
    assert len(dm.train_set.pairs) == len(data) - 2
    with pytest.raises(ValueError, match=r"record 1 .*missing answer"):
        datamodule(str(tmp_path / "bad"), bad_records="error").setup("fit")


def test_batches_are_deterministic_by_seed(setup):
    _, pairs = setup
    a, b = datamodule(pairs), datamodule(pairs)
    a.setup("fit"), b.setup("fit")
    assert [r["id"] for r in a.train_set[3]["online"]] == [r["id"] for r in b.train_set[3]["online"]]
    assert [r["id"] for r in a.train_set[3]["offline"]] == [r["id"] for r in b.train_set[3]["offline"]]


def test_gradient_accumulation_steps_the_optimizer_once_per_n_batches(setup):
    path, pairs = setup
    m = module(path, {"mu": 1, "beta": 0.0}, {"accumulate_grad_batches": 2})
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(m, datamodule(pairs))
    # Two optimizer steps took four batches: one epoch of the 4-batch datamodule.
    assert trainer.global_step == 2 and trainer.fit_loop.epoch_loop.batch_progress.total.completed == 4
    with pytest.raises(ValueError, match="accumulate_grad_batches=2 with loss.mu=2"):
        module(path, {"mu": 2}, {"accumulate_grad_batches": 2})


def test_score_gives_one_entry_per_sequence_and_the_sample_table_is_written(setup, tmp_path):
    path, pairs = setup
    m = module(path, {"mu": 1, "beta": 0.0}, sample_table_every=1)
    dm = datamodule(pairs, online_per_batch=2, offline_per_batch=1)
    dm.setup("fit")
    m.configure_model()
    scored = m.score(dm.train_set[0])
    assert len(scored.records) == len(scored.texts) == len(scored.ids) == len(scored.rewards) == 2 * 2 + 2
    assert [scored.stream(i) for i in range(6)] == ["online"] * 4 + ["offline"] * 2
    assert [scored.group(i) for i in range(6)] == [0, 0, 1, 1, 2, 2]
    assert scored.rewards[4:].tolist() == [2.0, 0.0] and scored.advantages[4] > 0 > scored.advantages[5]
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(m, dm)
    import json

    rows = [
        json.loads(x) for x in (tmp_path / "lightning_logs" / "version_0" / "samples.jsonl").read_text().splitlines()
    ]
    assert {r["step"] for r in rows} == {1, 2} and len(rows) == 2 * 2 * 2  # after steps 1, 2: 2 prompts x G=2
    assert {"question", "answer", "completion", "reward", "advantage"} <= set(rows[0])


def test_length_grouping_gives_batches_of_similar_lengths_reproducibly():
    from PIL import Image

    from mbpo_lit.data.hybrid import HybridBatches, length_key

    sizes = [56, 112, 168, 224]
    recs = [
        {"id": i, "question": "q" * (i % 7), "answer": "a", "image": Image.new("RGB", (sizes[i % 4],) * 2)}
        for i in range(64)
    ]
    plain = HybridBatches([], recs, 0, 4, 32, seed=0)
    grouped = HybridBatches([], recs, 0, 4, 32, seed=0, group_batches=8)

    def spread(ds):  # mean over batches of the gap between the largest and smallest image area
        areas = [[length_key(r)[0] for r in ds[i]["online"]] for i in range(len(ds))]
        return sum(max(a) - min(a) for a in areas) / len(areas)

    assert spread(grouped) < spread(plain) / 4
    # A function of (seed, index): a fresh object (a resumed run) gives the same batch, in any order.
    again = HybridBatches([], recs, 0, 4, 32, seed=0, group_batches=8)
    assert [r["id"] for r in again[13]["online"]] == [r["id"] for r in grouped[13]["online"]]
    # The M batches of a block split its draws: no record lost or repeated within the block.
    ids = [r["id"] for i in range(8) for r in grouped[i]["online"]]
    assert len(ids) == len(set(ids)) == 32


# ------------------------------------------------------------------------------------------------------------
# Loss variants through the module: what one optimizer step learns from under gradient accumulation.


def unquantized_module(path, loss: dict, accumulate: int = 1, adapter_path: str | None = None) -> MBPOModule:
    """The tiny module in fp32, from `adapter_path` or with non-zero LoRA B (a fresh B is 0, which would hide a
    scaling bug)."""
    lora = LoraSettings(r=4, alpha=8, dropout=0.0)
    cfg = ModelConfig(path, precision="fp32", quantization="none", lora=lora, adapter_path=adapter_path, device="cpu")
    m = MBPOModule(
        cfg,
        Sampling(group_size=2, max_new_tokens=4),
        Loss(**loss),
        Rewards(vocabulary=WORLD.colors),
        Optimization(accumulate_grad_batches=accumulate),
        sample_table_every=0,
    )
    m.configure_model()
    gen = torch.Generator().manual_seed(0)
    for name, p in m.model.named_parameters():
        if "lora_B" in name and adapter_path is None:
            p.data = torch.randn(p.shape, generator=gen) * 0.05
    return m


def gradients_at_each_step(m: MBPOModule, micro_batches: list) -> list[list[torch.Tensor]]:
    """`training_step` over fixed rollouts, without a Trainer: the gradients each optimizer step would apply
    (the step itself is left out, so every micro-batch sees the same weights)."""
    params = list(trainable_parameters(m.model).values())
    opt = m.configure_optimizers()["optimizer"]
    grads = []
    opt.step = lambda *a, **k: grads.append([p.grad.detach().clone() for p in params])
    rollouts = iter(micro_batches)
    m.score = lambda batch: next(rollouts)
    m.optimizers = lambda: opt
    m.manual_backward = lambda loss: loss.backward()
    m.clip_gradients = lambda *a, **k: None
    m._log_step = lambda *a: None
    m.train()
    for i in range(len(micro_batches)):
        m.training_step({}, i)
    return grads


def concatenated(a, b):
    """One rollout holding both micro-batches' sequences (one row per completion)."""
    return dataclasses.replace(
        a,
        records=a.records + b.records,
        texts=a.texts + b.texts,
        ids=a.ids + b.ids,
        rewards=torch.cat([a.rewards, b.rewards]),
        advantages=torch.cat([a.advantages, b.advantages]),
        prompts=None,
    )


@pytest.mark.parametrize("aggregation", ["dapo", "bnpo"])
def test_dapo_normalises_over_every_micro_batch_of_a_step_and_bnpo_over_each(setup, aggregation):
    path, _ = setup
    m = unquantized_module(path, {"aggregation": aggregation, "beta": 0.04}, accumulate=2)
    recs = build_records(WORLD, "train", 4)
    pairs = [dict(r, rejected=next(c for c in WORLD.colors if c != r["answer"])) for r in recs]
    torch.manual_seed(0)
    a = m.score({"online": recs[:1], "offline": pairs[1:2]})
    b = m.score({"online": [], "offline": pairs[2:4]})
    micro = []
    for scored in (a, b):  # fixed non-zero advantages (the tiny model's rewards may tie within a group)
        n = len(scored.ids)
        micro.append(dataclasses.replace(scored, prompts=None, advantages=torch.linspace(-1.0, 1.5, n)))
    a, b = micro
    tokens = [sum(len(c) for c in s.ids) for s in micro]
    assert tokens[0] != tokens[1]
    (accumulated,) = gradients_at_each_step(m, micro)

    # By hand, from the per-token terms: "dapo" sums both micro-batches' terms over all their tokens, "bnpo"
    # averages the two micro-batches' token means.
    params = list(trainable_parameters(m.model).values())
    total = 0.0
    for s in micro:
        with reference_mode(m.model):
            ref, _ = m.logprobs(s)
        logp, mask = m.logprobs(s)
        kw = {"normalizer": sum(tokens)} if aggregation == "dapo" else {}
        loss = grpo_loss(logp, logp.detach(), s.advantages, mask, ref, beta=0.04, aggregation=aggregation, **kw).loss
        total = total + (loss if aggregation == "dapo" else loss / 2)
    expected = torch.autograd.grad(total, params)
    for got, want in zip(accumulated, expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)

    m.optim.accumulate_grad_batches = 1
    (one_batch,) = gradients_at_each_step(m, [concatenated(a, b)])
    same = all(torch.allclose(g, w, atol=1e-6, rtol=1e-5) for g, w in zip(accumulated, one_batch))
    assert same == (aggregation == "dapo")  # "dapo": as one batch of both; "bnpo": not, the counts differ


def test_a_fit_from_saved_adapters_starts_at_kl_zero(setup, tmp_path):
    """The KL reference of a fit from `adapter_path` is its starting policy: the first step's KL is 0."""
    path, _ = setup
    start = unquantized_module(path, {"beta": 0.04})  # non-zero adapters
    m = unquantized_module(path, {"beta": 0.04}, adapter_path=str(save_adapter(start.model, tmp_path / "start")))
    recs = build_records(WORLD, "train", 2)
    scored = m.score({"online": recs, "offline": []})
    with reference_mode(m.model):
        ref, _ = m.logprobs(scored)
    logp, mask = m.logprobs(scored)
    assert torch.equal(ref, logp.detach())
    out = grpo_loss(logp, logp.detach(), scored.advantages, mask, ref, beta=0.04)
    assert out.kl.item() == 0.0


def test_step_batches_continue_over_epochs_ranks_and_a_resume():
    """Batch k of the run is batches[k * world + rank]: epoch 1 does not repeat epoch 0, two ranks see different
    batches, and a resume at batch 5 of a 4-batch epoch starts epoch 1 at its second batch."""
    from mbpo_lit.data.hybrid import StepBatches

    class Indexed:
        def __getitem__(self, i):
            return i

    def run(epoch, resume_at=0, rank=0, world=1):
        return list(StepBatches(Indexed(), 4, lambda: (epoch, resume_at, rank, world)))

    assert run(0) == [0, 1, 2, 3] and run(1) == [4, 5, 6, 7]
    assert run(0, rank=0, world=2) == [0, 2, 4, 6] and run(0, rank=1, world=2) == [1, 3, 5, 7]
    assert run(1, resume_at=5) == [5, 6, 7] and run(2, resume_at=5) == [8, 9, 10, 11]


def test_fresh_adapters_do_not_depend_on_what_the_process_drew_before(setup):
    """A mining job in the same process (or anything else drawing random numbers) before `configure_model` leaves
    the LoRA initialisation unchanged: it is drawn from sampling.seed."""
    path, _ = setup
    first = module(path)
    first.configure_model()
    torch.rand(1000)  # what a mining job in the same process would do to the global generator
    second = module(path)
    second.configure_model()
    a = {k: v for k, v in first.model.named_parameters() if "lora_A" in k}
    b = {k: v for k, v in second.model.named_parameters() if "lora_A" in k}
    assert a and all(torch.equal(a[k], b[k]) for k in a)
