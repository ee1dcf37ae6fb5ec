"""The adversary inside online GRPO (train/rollout.py), on the tiny Qwen2.5-VL checkpoint: perturbed rollouts
(`sampling.perturbed_k`: k of each group's samples drawn from a PGD-perturbed copy of the image, every row scored
on the clean image) and mixed groups (`loss.offline_as: mixed_groups`: a pair's answers join its record's online
group, scored by the verified rewards); with both off, the rollout of before, number for number."""

import math

import pytest
import torch
from custom_rewards import CharacterCount
from test_fit import tiny_config, world, write_config

from mbpo_lit.core.grpo import LossParts
from mbpo_lit.core.rewards import Reward
from mbpo_lit.fit import main
from mbpo_lit.testbed.questions import build_records
from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint
from mbpo_lit.testbed.world import WorldConfig
from mbpo_lit.train.module import MBPOModule
from mbpo_lit.train.scored import Scored
from mbpo_lit.train.settings import Loss, Optimization, Rewards, Sampling
from mbpo_lit.train.step_logs import step_metrics
from mbpo_lit.vlm import sampling as vlm_sampling
from mbpo_lit.vlm import shared_prefix as prefix
from mbpo_lit.vlm.chat import encode_prompts
from mbpo_lit.vlm.codec import PixelCodec
from mbpo_lit.vlm.logprobs import answer_logprobs
from mbpo_lit.vlm.policy import LoraSettings, ModelConfig

WORLD = WorldConfig(image_size=56)


@pytest.fixture(scope="module")
def path(tiny_root):
    return ensure_tiny_checkpoint("qwen2_5_vl", tiny_root)


def module(path, sampling: dict | None = None, loss: dict | None = None, share_prefix=True, extra=()) -> MBPOModule:
    """The tiny module in fp32 (fresh adapters: the policy is the base model)."""
    cfg = ModelConfig(
        str(path), precision="fp32", quantization="none", lora=LoraSettings(r=4, alpha=8, dropout=0.0), device="cpu"
    )
    m = MBPOModule(
        cfg,
        Sampling(**({"group_size": 3, "max_new_tokens": 4} | (sampling or {}))),
        Loss(**(loss or {})),
        Rewards(vocabulary=WORLD.colors, extra=list(extra)),
        Optimization(),
        sample_table_every=0,
        share_prefix=share_prefix,
    )
    m.configure_model()
    return m


def records(n: int):
    recs = build_records(WORLD, "train", n)
    return recs, [dict(r, rejected=next(c for c in WORLD.colors if c != r["answer"])) for r in recs]


def raw_images(m: MBPOModule, batch) -> list[torch.Tensor]:
    """The images a processor batch shows the model, in [0, 1]."""
    return PixelCodec.from_processor(m.processor).raw_images(batch)


# ------------------------------------------------------------------------------------------------------------
# Both options off: the rollout of before. Recorded from the code before the options existed (same checkpoint,
# batch and seed), with a length reward so that the advantages are not all 0.

BEFORE_IDS = [
    [436, 73, 428, 222],
    [395, 504, 48, 239],
    [491, 349, 43, 467],
    [327, 185, 20, 81],
    [399, 72, 379, 506],
    [220, 37, 252, 378],
    [86, 462, 2],
    [308, 2],
]
BEFORE_REWARDS = [0.5, 0.550000011920929, 0.800000011920929, 0.25, 0.8500000238418579, 0.30000001192092896, 2.0, 0.0]
BEFORE_ADVANTAGES = [
    -0.725414514541626,
    -0.4145223796367645,
    1.1399379968643188,
    -0.6506187319755554,
    1.1510944366455078,
    -0.5004759430885315,
    0.7070567607879639,
    -0.7070567607879639,
]


@pytest.mark.parametrize("share_prefix", [True, False])
def test_with_both_options_off_the_rollout_is_the_one_of_before(path, share_prefix):
    m = module(path, share_prefix=share_prefix, extra=[CharacterCount(weight=0.5)])
    recs, pairs = records(3)
    torch.manual_seed(0)
    scored = m.score({"online": recs[:2], "offline": pairs[2:3]})
    assert scored.ids == BEFORE_IDS
    assert scored.rewards.tolist() == BEFORE_REWARDS and scored.advantages.tolist() == BEFORE_ADVANTAGES
    assert scored.n_online == 6 and scored.repeats == [3, 3, 2] and scored.online_sizes == [3, 3]
    assert [scored.group(i) for i in range(8)] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert scored.kinds == ["clean"] * 6 and [r["id"] for r in scored.records[6:]] == [recs[2]["id"]] * 2


# ------------------------------------------------------------------------------------------------------------
# Perturbed rollouts.


def test_k_samples_of_each_group_come_from_the_perturbed_image_and_the_loss_reads_the_clean_one(path, monkeypatch):
    """G = 3, k = 2: `generate` (one row per completion) is called once on the clean images for 1 sample each and
    once on images within epsilon of them, not equal, for 2 each; those are the last 2 rows of each group. The
    rows keep the clean records, and the shared-prefix layout draws the same and keeps the clean prompts."""
    g, k, eps = 3, 2, 32.0
    m = module(path, {"perturbed_k": k, "perturb_epsilon": eps}, share_prefix=False)
    recs, _ = records(2)
    clean = raw_images(m, encode_prompts(m.processor, [r["question"] for r in recs], [r["image"] for r in recs]))
    calls, generate = [], vlm_sampling.generate

    def spy(model, batch, n, *args):
        out = generate(model, batch, n, *args)
        calls.append((raw_images(m, batch), n, out))
        return out

    monkeypatch.setattr(vlm_sampling, "generate", spy)
    torch.manual_seed(0)
    scored = m.score({"online": recs, "offline": []})
    (seen_clean, n_clean, from_clean), (seen_moved, n_moved, from_moved) = calls
    assert (n_clean, n_moved) == (g - k, k)
    assert all(torch.equal(a, b) for a, b in zip(seen_clean, clean))
    for moved, image in zip(seen_moved, clean):
        assert (moved - image).abs().max() <= eps / 255 + 1e-5 and not torch.equal(moved, image)
    for i in range(len(recs)):
        group = scored.ids[i * g : (i + 1) * g]
        assert group == from_clean[i * (g - k) : (i + 1) * (g - k)] + from_moved[i * k : (i + 1) * k]
    assert scored.kinds == ["clean", "perturbed", "perturbed"] * 2 and scored.repeats == [g, g]
    # The loss passes: every row's record is the clean one, image and all.
    assert all(row["image"] is recs[i // g]["image"] for i, row in enumerate(scored.records))

    m.hparams.share_prefix = True  # one prefill per prompt: the same draws, and the clean prompts kept
    monkeypatch.setattr(vlm_sampling, "generate", generate)
    torch.manual_seed(0)
    shared = m.score({"online": recs, "offline": []})
    assert shared.ids == scored.ids
    want = prefix.encode(m.model, m.processor, [r["question"] for r in recs], [r["image"] for r in recs])
    assert all(torch.equal(a, b) for a, b in zip(shared.prompts.features, want.features))


def test_the_rollouts_pgd_lowers_the_ground_truth_answers_likelihood_and_repeats_with_the_seed(path):
    m = module(path, {"perturbed_k": 1})
    m.model.eval()
    recs, _ = records(3)
    qs, answers = [r["question"] for r in recs], [r["answer"] for r in recs]
    torch.manual_seed(0)
    pictures = m.rollouts().perturb(recs)
    with torch.no_grad():
        before = answer_logprobs(m.model, m.processor, qs, answers, [r["image"] for r in recs])[0].sum(1)
        after = answer_logprobs(m.model, m.processor, qs, answers, pictures)[0].sum(1)
    assert (after < before).all(), (before, after)
    # The random start is drawn from torch's generator, which the module seeds per step: the same seed, the
    # same pictures (a resumed run repeats the step); another seed, others.
    torch.manual_seed(0)
    assert [p.tobytes() for p in m.rollouts().perturb(recs)] == [p.tobytes() for p in pictures]
    torch.manual_seed(1)
    assert [p.tobytes() for p in m.rollouts().perturb(recs)] != [p.tobytes() for p in pictures]


# ------------------------------------------------------------------------------------------------------------
# Mixed groups.


class Exact(Reward):
    """3 for the record's answer, 1 for its rejected answer, 0 for anything else: rewards known by hand."""

    def __call__(self, prompts, completions, records):
        return [
            3.0 if c == r["answer"] else 1.0 if c == r.get("rejected") else 0.0 for c, r in zip(completions, records)
        ]


def test_mixed_groups_add_a_pairs_answers_to_its_records_group_with_verified_rewards(path):
    g = 2
    m = module(path, {"group_size": g}, {"offline_as": "mixed_groups"})
    m.rewards = {"exact": Exact()}
    recs, pairs = records(3)
    torch.manual_seed(0)
    scored = m.score({"online": recs[:1], "offline": pairs[1:3]})
    assert scored.repeats == [g, g + 2, g + 2] and len(scored.ids) == scored.n_online == 10
    assert {scored.stream(i) for i in range(10)} == {"online"}  # no offline stream is left
    assert [scored.group(i) for i in range(10)] == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert scored.kinds == ["clean"] * 2 + (["clean"] * 2 + ["chosen", "rejected"]) * 2
    for j, pair in enumerate(pairs[1:3]):
        rows = range(2 + j * 4, 6 + j * 4)
        assert all(scored.records[i] is pair for i in rows)
        assert [scored.texts[i] for i in rows][2:] == [pair["answer"], pair["rejected"]]
    samples = [i for i, kind in enumerate(scored.kinds) if kind == "clean"]
    assert all(scored.texts[i] not in (scored.records[i]["answer"], scored.records[i].get("rejected")) for i in samples)
    # By hand: the policy's samples score 0, the chosen answer 3, the rejected 1 (not the pair rewards 2 / 0).
    assert scored.rewards.tolist() == [0, 0, 0, 0, 3, 1, 0, 0, 3, 1]
    # Group [0, 0, 3, 1]: mean 1, unbiased std sqrt(2); the online group [0, 0] ties.
    s = math.sqrt(2) + 1e-4
    want = [0, 0] + [-1 / s, -1 / s, 2 / s, 0.0] * 2
    torch.testing.assert_close(scored.advantages, torch.tensor(want))
    # The log-prob passes read each group's prompt once for its G + 2 rows, as one row per completion does.
    fast, _ = m.logprobs(scored)
    slow, _ = m.logprobs(Scored(**{**scored.__dict__, "prompts": None}))
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)


def test_the_step_logs_count_the_policys_samples_and_the_perturbed_ones_apart():
    """Online rewards and accuracy over the policy's own samples (a mixed group's pair answers left out),
    `online/perturbed_accuracy` over the perturbed samples, zero-signal groups over every online group."""
    kinds = ["clean", "perturbed", "clean", "perturbed", "chosen", "rejected"]
    scored = Scored(
        records=[{}] * 8,
        texts=[""] * 8,
        ids=[[1]] * 8,
        rewards=torch.tensor([1.0, 0.0, 1.0, 1.0, 3.0, 0.0, 2.0, 0.0]),
        advantages=torch.zeros(8),
        parts={"accuracy": [1.0, 0.0, 1.0, 1.0, 1.0, 0.0]},
        n_online=6,
        sizes=[2, 4, 2],
        kinds=kinds,
    )
    zero = torch.tensor(0.0)
    logs = step_metrics(LossParts(zero, zero, zero, zero, zero), scored, torch.ones(8, 1), 1.0)
    assert logs["online/accuracy"] == logs["online/reward_accuracy"] == 0.75
    assert logs["online/perturbed_accuracy"] == 0.5 and logs["online/reward_mean"] == 0.75
    assert logs["online/zero_signal_groups"] == 0.0 and logs["offline/reward_mean"] == 1.0
    plain = Scored(**{**scored.__dict__, "kinds": [], "sizes": [2, 2, 2, 2]})
    logs = step_metrics(LossParts(zero, zero, zero, zero, zero), plain, torch.ones(8, 1), 1.0)
    assert "online/perturbed_accuracy" not in logs and logs["online/accuracy"] == 4 / 6
    assert logs["online/zero_signal_groups"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------------------------
# Settings, variants, and a short fit with each option.


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda: Sampling(group_size=4, perturbed_k=4), r"sampling.perturbed_k=4: must be >= 0 and < .*group_size=4"),
        (lambda: Sampling(perturbed_k=-1), "sampling.perturbed_k=-1: must be >= 0"),
        (lambda: Sampling(perturb_epsilon=0.0), r"perturb_epsilon=0.0 must be in \(0, 255\]"),
        (lambda: Sampling(perturb_steps=0), "perturb_steps=0 >= 1"),
        (lambda: Loss(offline_as="mixed_groups", streams="separate"), "offline_as=mixed_groups with loss.streams="),
        (
            lambda: Loss(offline_as="mixed_groups", streams="separate", offline_loss="dpo"),
            "offline_as=mixed_groups with .*offline_loss=dpo",
        ),
        (lambda: Loss(offline_as="mixed_groups", offline_loss="dpo"), "offline_as=mixed_groups with"),
        (lambda: Loss(offline_as="groups"), "loss.offline_as='groups': must be pairs or mixed_groups"),
    ],
)
def test_the_options_refuse_what_cannot_be_by_name_in_one_line(make, says):
    with pytest.raises(ValueError, match=says) as err:
        make()
    assert "\n" not in str(err.value)


def test_a_recipe_with_as_many_perturbed_samples_as_the_group_is_an_error_before_the_model_loads(capsys, monkeypatch):
    import mbpo_lit.testbed.embedded as embedded

    monkeypatch.setattr(embedded, "prepare", lambda *a: pytest.fail("got as far as preparing the model"))
    with pytest.raises(SystemExit) as exit_:
        main(["--model.sampling.perturbed_k", "4", "--trainer.max_steps", "1"])
    # Lightning may log "Seed set to 0" to stderr first; the error itself is one line.
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_.value.code == 2 and len(errors) == 1
    assert errors[0].startswith("error: sampling.perturbed_k=4: must be >= 0 and < sampling.group_size=4")


def test_the_variants_parse_into_the_options(tmp_path):
    from mbpo_lit.data.hybrid import HybridDataModule
    from mbpo_lit.experiments import ablate
    from mbpo_lit.experiments.ablate import AblationConfig
    from mbpo_lit.experiments.variants import GRID
    from mbpo_lit.fit import MBPOCLI

    by_name = {v.name: v for v in GRID}
    cfg = AblationConfig(out=str(tmp_path), steps=30)
    perturbed, mixed = by_name["perturbed_rollouts"], by_name["mixed_groups"]
    assert perturbed.mine is None and mixed.mine == {} and {"adversary"} == set(perturbed.sweeps) == set(mixed.sweeps)
    args = ablate.fit_args(perturbed, 0, None, tmp_path / "p", cfg)
    cli = MBPOCLI(MBPOModule, HybridDataModule, args=args, run=False, save_config_callback=None)
    assert cli.model.sampling.perturbed_k == 2 and cli.model.sampling.group_size == 4
    assert (cli.model.sampling.perturb_epsilon, cli.model.sampling.perturb_steps) == (32.0, 4)
    args = ablate.fit_args(mixed, 0, str(tmp_path / "pairs"), tmp_path / "m", cfg)
    cli = MBPOCLI(MBPOModule, HybridDataModule, args=args, run=False, save_config_callback=None)
    assert cli.model.loss.offline_as == "mixed_groups" and cli.datamodule.pairs_path == str(tmp_path / "pairs")


@pytest.mark.parametrize(
    "option, logged, absent",
    [
        (["--model.sampling.perturbed_k", "1"], {"online/perturbed_accuracy", "offline/reward_mean"}, set()),
        (["--model.loss.offline_as", "mixed_groups"], {"online/accuracy"}, {"offline/reward_mean"}),
    ],
)
def test_a_short_fit_with_each_option(tiny_pairs, tmp_path, option, logged, absent):
    path, pairs = tiny_pairs
    config = tiny_config(path, pairs, tmp_path, {"online": world(["train"], 8), "val": None})
    config["trainer"]["log_every_n_steps"] = 1
    config["model"]["evaluate_after_fit"] = False
    cli = main(["--config", write_config(tmp_path, config), *option])
    assert cli.trainer.global_step == 2
    header = next(tmp_path.rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert logged <= set(header) and not absent & set(header), header
