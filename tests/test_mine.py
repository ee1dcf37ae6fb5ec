"""Mining: output format, resumption, bad records, IIG filtering; and, on the biased base model, that
adversarial negatives follow the language prior far more often than noise negatives at equal epsilon."""

import json

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from PIL import Image

import benchmark_files as bf
from mbpo_lit.core.errors import SettingsError
from mbpo_lit.data.benchmarks import AOKVQA
from mbpo_lit.data.hybrid import load_pairs
from mbpo_lit.data.sources import Records, SourceError
from mbpo_lit.mining import MineConfig, Miner, apply_iig_filter, mine_pairs
from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint
from mbpo_lit.testbed.world_source import WorldSource


@pytest.fixture(scope="module")
def qwen_path(tiny_root):
    return str(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root))


def small(out, model, **kw):
    kw = (
        dict(out=str(out), model=model, source=WorldSource(["train"], 6), n=6, batch_size=3, steps=2, iig_filter="none")
        | kw
    )
    return MineConfig(**kw)


class Kill(Exception):
    pass


def test_dataset_has_trl_columns_and_stats(qwen_path, tmp_path):
    path = mine_pairs(small(tmp_path / "m", qwen_path), progress=False)
    data = load_from_disk(str(path))
    assert {"prompt", "chosen", "rejected", "images", "perturbed_image"} <= set(data.column_names)
    assert {"iig_sum", "iig_mean", "attack_steps", "logp_before", "logp_after", "linf"} <= set(data.column_names)
    row = data[0]
    assert row["prompt"][0]["content"][0]["type"] == "image" and row["chosen"][0]["role"] == "assistant"
    assert row["linf"] <= MineConfig("m", "s").epsilon + 1e-3 and row["chosen"] != row["rejected"]
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert summary["candidates"] == 6 and summary["pairs"] == len(data)


def test_killed_and_resumed_run_equals_uninterrupted(qwen_path, tmp_path):
    whole = load_from_disk(str(mine_pairs(small(tmp_path / "a", qwen_path), progress=False)))

    def kill_after_first(start):
        if start == 0:
            raise Kill

    with pytest.raises(Kill):
        mine_pairs(small(tmp_path / "b", qwen_path), on_chunk=kill_after_first, progress=False)
    assert len(list((tmp_path / "b" / "shards").glob("*.parquet"))) == 1
    resumed = load_from_disk(str(mine_pairs(small(tmp_path / "b", qwen_path), progress=False)))
    assert resumed["id"] == whole["id"] and len(set(resumed["id"])) == len(resumed)
    assert resumed["rejected"] == whole["rejected"] and resumed["logp_after"] == whole["logp_after"]


def test_bad_source_records_are_reported_by_index_and_counted(qwen_path, tmp_path):
    Image.fromarray(np.zeros((56, 56, 3), dtype="uint8")).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows = [
        {"image": "ok.png", "question": "What color?", "answer": "red"},
        {"image": "ok.png", "question": "What color?", "answer": ""},
        {"image": "broken.png", "question": "What color?", "answer": "blue"},
    ]
    src = tmp_path / "data.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "m"
    mine_pairs(small(out, qwen_path, source=str(src), n=3), progress=False)
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(s["index"], s["reason"].split(":")[0]) for s in skipped] == [
        (1, "missing answer"),
        (2, "unreadable image"),
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == 2 and summary["candidates"] == 1


def test_iig_filter_directions():
    rows = [{"iig_mean": v, "source_index": i} for i, v in enumerate([0.1, 2.0, -1.0, 0.5])]
    cfg = MineConfig("model", "source", iig_fraction=0.5)
    assert [r["source_index"] for r in apply_iig_filter(rows, cfg)] == [1, 3]
    cfg.iig_filter = "low"
    assert [r["source_index"] for r in apply_iig_filter(rows, cfg)] == [0, 2]
    cfg.iig_filter, cfg.iig_threshold = "high", 0.3
    assert [r["source_index"] for r in apply_iig_filter(rows, cfg)] == [1, 3]
    cfg.iig_filter = "none"
    assert len(apply_iig_filter(rows, cfg)) == 4


@pytest.fixture(scope="module")
def biased_model():
    """The embedded default's biased base model, built (about 13 min on 2 cores) or reused from the cache that
    `python -m mbpo_lit fit` and the notebooks use, `runs/base/` (keyed by its config, so never a stale one)."""
    from mbpo_lit.testbed.base_model import WarmStartConfig, build_base_model

    return str(build_base_model(WarmStartConfig(), progress=False))


def test_adversarial_negatives_follow_the_prior_far_more_than_uniform_noise(biased_model, tmp_path):
    summaries = {}
    for method in ("pgd", "uniform"):
        out = tmp_path / method
        mine_pairs(
            MineConfig(
                out=str(out),
                model=biased_model,
                method=method,
                n=256,
                iig_filter="none",
                source=WorldSource(["eval_counter_prior"], 256),
            ),
            progress=False,
        )
        summaries[method] = json.loads((out / "summary.json").read_text())
    pgd, uniform = summaries["pgd"], summaries["uniform"]
    # Same records, same budget: the clean-image behaviour is the same, so compare what the perturbation did
    # to the questions the model answered correctly from the clean image.
    assert pgd["counter_prior_clean_correct"] == uniform["counter_prior_clean_correct"] >= 10
    # The margin was 0.3 on an early, strongly biased base model (0.39 vs 0.00) and 0.24 vs 0.00 on a weakly
    # biased one; 0.15 keeps "far more" without depending on the base model's exact strength.
    assert pgd["prior_rate_counter_prior_clean_correct"] >= uniform["prior_rate_counter_prior_clean_correct"] + 0.15
    assert pgd["prior_rate_counter_prior"] > uniform["prior_rate_counter_prior"]
    assert pgd["mean_logp_drop"] > 0 and pgd["max_linf"] <= 32 + 1e-3


def test_a_chunk_of_mixed_image_sizes_is_mined_as_one_batch(qwen_path, tmp_path, photos, monkeypatch):
    """Real photographs of three sizes in one chunk: attacked as one batch (one objective call per step for all
    four), the rows come back in record order, and (without a random start) they equal mining each record on
    its own."""
    from mbpo_lit.data.sources import Records

    for i, photo in enumerate(photos):
        photo.save(tmp_path / f"{i}.jpg")
    rows = [
        {"image": f"{i}.jpg", "question": "Is there a cat?", "answer": "yes", "answer_type": "yes_no"}
        for i in range(len(photos))
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = Records(str(tmp_path / "d.jsonl"))
    kw = dict(model=qwen_path, source=source, n=4, steps=2, random_start=False, iig_filter="none")
    calls: list[int] = []
    objective = Miner.objective

    def counting(self, *args, **kwargs):
        value = objective(self, *args, **kwargs)
        step = lambda images, index: calls.append(len(index)) or value(images, index)  # noqa: E731
        step.answers = value.answers
        return step

    monkeypatch.setattr(Miner, "objective", counting)
    together = load_from_disk(str(mine_pairs(MineConfig(out=str(tmp_path / "a"), batch_size=4, **kw), progress=False)))
    assert calls[0] == 4  # the first step evaluates all four photographs together
    alone = load_from_disk(str(mine_pairs(MineConfig(out=str(tmp_path / "b"), batch_size=1, **kw), progress=False)))
    assert len({p.size for p in photos}) == 3 and together["source_index"] == [0, 1, 2, 3]
    assert together["attack_steps"] == alone["attack_steps"] and together["rejected"] == alone["rejected"]
    assert np.allclose(together["logp_after"], alone["logp_after"], atol=1e-4)


def photo_records(tmp_path, photos, answers, answer_type="phrase"):
    """A jsonl of real photographs (mixed sizes) with the given ground-truth answers, cycling the photos."""
    for i, photo in enumerate(photos):
        photo.save(tmp_path / f"{i}.jpg")
    rows = [
        {"image": f"{i % len(photos)}.jpg", "question": "What is in the picture?", "answer": a, "id": f"r{i}"}
        for i, a in enumerate(answers)
    ]
    path = tmp_path / f"{answer_type}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_no_pair_is_written_whose_rejected_answer_the_verifier_accepts(qwen_path, tmp_path, photos):
    """Ground truth = the model's own clean answer for half the records: with no perturbation ("none") those
    answers are correct and must not become pairs; with every answer correct, the dataset is empty."""
    from mbpo_lit.core.answers import is_correct

    probe = photo_records(tmp_path, photos, ["zebra crossing"] * 4)
    kw = dict(model=qwen_path, n=4, method="none", iig_filter="none")
    clean = load_from_disk(str(mine_pairs(MineConfig(out=str(tmp_path / "probe"), source=probe, **kw), progress=False)))
    said = clean["clean_answer"]
    assert len(said) == 4 and all(s.strip() for s in said)

    mixed = photo_records(tmp_path, photos, [said[0], "zebra crossing", said[2], "zebra crossing"])
    data = load_from_disk(str(mine_pairs(MineConfig(out=str(tmp_path / "mixed"), source=mixed, **kw), progress=False)))
    assert data["id"] == ["r1", "r3"]
    for row in data:
        assert not is_correct(row["rejected"][0]["content"][0]["text"], row["answer"], row["answer_type"])

    same = photo_records(tmp_path, photos, said)
    with pytest.warns(UserWarning, match="kept no pair"):
        path = mine_pairs(MineConfig(out=str(tmp_path / "same"), source=same, **kw), progress=False)
    assert len(load_from_disk(str(path))) == 0
    summary = json.loads((tmp_path / "same" / "summary.json").read_text())
    assert summary["candidates"] == 4 and summary["rejected_wrong"] == 0 and summary["pairs"] == 0


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "llava"])
def test_the_saved_perturbed_image_reproduces_the_recorded_answer(arch, tiny_root, tmp_path, photos):
    """Read back from disk, the saved 8-bit perturbed picture, given to the model in place of the (resized)
    clean image, yields the greedy answer and the ground-truth log-likelihood that mining recorded."""
    from mbpo_lit.vlm.chat import answer_token_ids, encode_prompts
    from mbpo_lit.vlm.codec import to_raw
    from mbpo_lit.vlm.policy import ModelConfig, load_policy

    model = str(ensure_tiny_checkpoint(arch, tiny_root))
    source = photo_records(tmp_path, photos, ["zebra crossing"] * 4)
    cfg = MineConfig(model=model, source=source, out=str(tmp_path / "m"), n=4, steps=3, iig_filter="none")
    data = load_from_disk(str(mine_pairs(cfg, progress=False)))
    policy = load_policy(ModelConfig(model, precision="fp32", quantization="none", lora=None, device="cpu"))
    miner = Miner(policy.model, policy.processor, cfg)
    assert len(data) == 4 and max(data["linf"]) <= cfg.epsilon
    for row in data:
        prompts = encode_prompts(policy.processor, [row["question"]], row["images"])
        saved = to_raw(row["perturbed_image"])[None]
        clean = torch.stack(miner.codec.raw_images(prompts))
        assert saved.shape == clean.shape and 0 < (saved - clean).abs().max() * 255 <= cfg.epsilon + 1e-3
        assert miner.answer(prompts, saved) == [row["rejected"][0]["content"][0]["text"]]
        logp = miner.loglik(prompts, answer_token_ids(policy.processor, [row["answer"]]))(saved)
        assert abs(float(logp) - row["logp_after"]) < 1e-3


def test_mining_reads_answer_type_and_loads_4bit(qwen_path, tmp_path, photos):
    """`answer_type` picks the verifier for a source given as a path, and a 4-bit model mines (QLoRA's loading,
    as a 7B model is mined on one GPU); the summary counts what was read, usable and mined."""
    source = photo_records(tmp_path, photos, ["Yes.", "no", "maybe", "yes"])
    out = tmp_path / "m"
    cfg = MineConfig(model=qwen_path, source=source, out=str(out), n=2, answer_type="yes_no", quantization="4bit")
    data = load_from_disk(str(mine_pairs(cfg, progress=False)))
    stats = load_from_disk(str(out / "dataset"))
    assert set(stats["answer_type"]) <= {"yes_no"} and set(data["answer"]) <= {"yes", "no"}
    summary = json.loads((out / "summary.json").read_text())
    # n=2 reads two rows; both are usable yes/no answers.
    assert (summary["source_records_read"], summary["usable_records"], summary["mined_records"]) == (2, 2, 2)
    with pytest.raises(SourceError, match="--source.answer_type"):
        mine_pairs(MineConfig(model=qwen_path, source=Records(source), out=str(tmp_path / "x"), answer_type="yes_no"))


def test_multiple_choice_pairs_keep_their_options_through_mining_and_loading(qwen_path, tmp_path, photos):
    """An A-OKVQA record's options travel with its pair: the training side (`load_pairs`, and re-mining, which
    attacks the loaded pairs again) judges "C. a cat" by the option texts the source gave, not by the letter alone."""
    source = AOKVQA(str(bf.aokvqa(tmp_path / "a", photos)))
    cfg = MineConfig(model=qwen_path, source=source, out=str(tmp_path / "m"), n=4, method="none", iig_filter="none")
    mine_pairs(cfg, progress=False)
    records = {r["id"]: r for r in source.load()[0]}
    pairs = load_pairs(str(tmp_path / "m"))
    assert pairs, "the tiny model answered every question right: nothing to check"
    for pair in pairs:
        assert pair["choices"] == records[pair["id"]]["choices"] == ["a person", "a cup of coffee", "a cat", "a rocket"]
    world = load_pairs(str(mine_pairs(small(tmp_path / "w", qwen_path, n=3), progress=False)))
    assert world and all(p["choices"] is None and p["group"] and p["prior_answer"] for p in world)


def test_another_jobs_shards_name_the_override(qwen_path, tmp_path):
    mine_pairs(small(tmp_path / "m", qwen_path, n=3), progress=False)
    with pytest.raises(SettingsError, match="--overwrite true"):
        mine_pairs(small(tmp_path / "m", qwen_path, n=3, epsilon=4.0), progress=False)
    mine_pairs(small(tmp_path / "m", qwen_path, n=3, epsilon=4.0, overwrite=True), progress=False)
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["epsilon"] == 4.0


def test_a_job_that_failed_before_its_first_shard_blocks_no_retry(qwen_path, tmp_path):
    with pytest.raises(OSError):
        mine_pairs(small(tmp_path / "m", str(tmp_path / "no-such-model"), n=3), progress=False)
    mine_pairs(small(tmp_path / "m", qwen_path, n=3), progress=False)  # other settings, same --out: fine, no shards yet
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["candidates"] == 3


@pytest.mark.parametrize(
    "option, message",
    [
        ({"epsilon": 0.0}, "--epsilon 0.0 must be > 0"),
        ({"steps": -1}, "--steps -1"),
        ({"iig_fraction": 1.5}, "--iig_fraction 1.5 must be in"),
        ({"batch_size": 0}, "--batch_size 0"),
        ({"pair_filter": "prior"}, "--pair_filter 'prior' is not"),
        ({"prior_from": "blank"}, "--prior_from 'blank' is not"),
    ],
)
def test_out_of_range_options_are_refused_before_loading_anything(option, message, tmp_path):
    with pytest.raises(SettingsError, match=message):
        mine_pairs(small(tmp_path / "m", "no-model-is-loaded", **option), progress=False)
    assert not (tmp_path / "m").exists()


def test_bad_records_error_lists_every_unusable_record_and_mines_nothing(qwen_path, tmp_path):
    Image.fromarray(np.zeros((56, 56, 3), dtype="uint8")).save(tmp_path / "ok.png")
    rows = [
        {"image": "ok.png", "question": "  ", "answer": "red", "id": "blank"},
        {"image": "missing.png", "question": "What color?", "answer": "blue", "id": "lost"},
        {"image": "ok.png", "question": "What color?", "answer": "red", "id": "fine"},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "m"
    with pytest.raises(SourceError, match=r"2 unusable records") as err:
        mine_pairs(small(out, qwen_path, source=str(tmp_path / "d.jsonl"), n=3, bad_records="error"), progress=False)
    assert "id blank): empty question" in str(err.value) and "id lost): unreadable image" in str(err.value)
    assert [json.loads(x)["id"] for x in (out / "skipped.jsonl").read_text().splitlines()] == ["blank", "lost"]
    assert not list((out / "shards").glob("*.parquet"))


def test_a_step_proven_correct_by_the_forward_pass_is_not_decoded_and_changes_nothing(biased_model, monkeypatch):
    """PGD decodes a sample's answer only when the teacher-forced pass on its 8-bit image does not prove the ground
    truth is the greedy answer: the pairs are those of decoding at every step, with far fewer decodes."""
    from mbpo_lit.vlm.policy import ModelConfig, load_policy

    policy = load_policy(ModelConfig(biased_model, precision="fp32", quantization="none", lora=None))
    source = WorldSource(["train"], 24)
    records = source.load()[0]
    cfg = MineConfig(model=biased_model, source=source, n=24, batch_size=24, iig_filter="none")
    decoded: list[int] = []
    answer = Miner.answer

    def counting(self, prompts, images, *args, **kwargs):
        decoded.append(len(images))
        return answer(self, prompts, images, *args, **kwargs)

    monkeypatch.setattr(Miner, "answer", counting)
    proven = Miner(policy.model, policy.processor, cfg, source.vocabulary).mine(records, 0)
    with_proof = sum(decoded)
    decoded.clear()
    monkeypatch.setattr(Miner, "provable", lambda self: False)  # decode every sample at every step
    always = Miner(policy.model, policy.processor, cfg, source.vocabulary).mine(records, 0)
    for key in ("attack_steps", "rejected", "kept", "clean_answer"):
        assert [r[key] for r in proven] == [r[key] for r in always], key
    assert sum(r["attack_steps"] for r in always) > len(records)  # the attack took steps: there was work to skip
    assert with_proof < sum(decoded) / 2


def test_a_shard_is_the_file_datasets_writes_for_the_rows(tmp_path, photos):
    """`write_shard` writes what `Dataset.from_list(rows).to_parquet` writes (same schema, features and rows,
    photographs of mixed sizes included), atomically: no temporary file is left."""
    import pyarrow.parquet as pq
    from datasets import Dataset

    from mbpo_lit.mining.job import write_shard

    rows = [
        {
            "id": f"p{i}",
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "Yes, there is a cat."}]}],
            "images": [photo],
            "perturbed_image": photo.rotate(90, expand=True),
            "iig_mean": float(i) / 3,
            "kept": i % 2 == 0,
            "choices": json.dumps(["a cat", "a dog"]),
        }
        for i, photo in enumerate(photos)
    ]
    write_shard(rows, tmp_path / "ours.parquet")
    Dataset.from_list(rows).to_parquet(str(tmp_path / "theirs.parquet"))
    ours, theirs = pq.read_table(tmp_path / "ours.parquet"), pq.read_table(tmp_path / "theirs.parquet")
    assert ours.schema.equals(theirs.schema, check_metadata=True) and ours.equals(theirs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.parquet", "theirs.parquet"]
