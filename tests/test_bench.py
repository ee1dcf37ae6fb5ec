"""The benchmark command: every side runs on the tiny checkpoint and the vision-tower counter counts what it names."""

import json

import pytest

from mbpo_lit.experiments import bench, sweep
from mbpo_lit.experiments.bench import BenchConfig, format_results, run, step_stats
from mbpo_lit.experiments.bench import ratios as run_ratios


@pytest.mark.slow
def test_bench_counts_every_image_the_vision_tower_encodes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tiny checkpoint for the benchmark is written under ./runs
    monkeypatch.setattr(bench.trl, "trl_available", lambda: False)  # the TRL side as on a machine without trl
    cfg = BenchConfig(
        group_size=2,
        prompts=2,
        max_new_tokens=3,
        beta=0.04,
        steps=1,
        warmup=0,
        pgd_steps=1,
        pgd_images=2,
        out=str(tmp_path / "bench.json"),
    )
    results = run(cfg)
    fast, rowwise = results["mbpo_lit"], results["rowwise"]
    # Shared prefix: one vision-tower call per step, one encoding per distinct image (generation, policy and
    # reference passes all reuse it).
    assert fast["vision_calls_per_step"] == 1 and fast["images_encoded_per_step"] == cfg.prompts
    # One row per completion: a generation prefill per prompt image, then the policy and the reference pass
    # over G x prompts sequences, each from pixels.
    assert rowwise["images_encoded_per_step"] == cfg.prompts * (1 + 2 * cfg.group_size)
    assert rowwise["vision_calls_per_step"] == 3
    for side in (fast, rowwise):
        assert side["step_s"] > 0 and side["peak_memory_mb"] > 0 and side["generated_tokens_per_s"] > 0
        assert side["step_s_min"] <= side["step_s"] <= side["step_s_max"] and side["steps_measured"] == cfg.steps
    r = results["ratios"]
    assert r["images_encoded_per_distinct_image"] == 1 and r["rowwise_images_encoded_per_distinct_image"] == 5
    assert r["step_time_vs_rowwise"] == fast["step_s"] / rowwise["step_s"]
    assert results["pgd"]["overhead_ratio"] > 0
    # Without trl: the TRL side says how to get it, and every ratio against it says "unavailable".
    assert results["trl"] == {"unavailable": "unavailable: pip install mbpo_lit[bench]"}
    assert r["step_time_vs_trl"] == r["trl_images_encoded_per_distinct_image"] == "unavailable"
    # Mixed-size photographs (astronaut 160x160, coffee 160x107) in one batch, against one size and one at a time.
    mine = results["mine_sizes"]
    assert mine["images"] == 2 and mine["image_sizes"] == ["160x107", "160x160"]
    assert mine["mixed_sizes_images_per_s"] > 0 and mine["one_at_a_time_images_per_s"] > 0
    assert r["mining_mixed_sizes_vs_one_size"] == mine["mixed_vs_one_size_throughput"] > 0
    assert mine["one_size_batched_vs_one_at_a_time_speedup"] > 0
    # The default mining config on the world's base model: PGD executes only the sample-steps the samples need.
    mining = results["mining"]
    assert mining["executed_sample_steps"] == mining["needed_sample_steps"] >= mining["images"] == cfg.pgd_images
    assert r["mining_sample_steps_needed_vs_executed"] == 1.0 and mining["pgd_vs_bare_forward_backward"] > 0
    assert json.loads((tmp_path / "bench.json").read_text())["mbpo_lit"] == fast
    assert not (tmp_path / "adapter").exists()  # the GRPO sides' fits export their adapters to a temporary folder
    table = format_results(results)
    assert "images_encoded_per_distinct_image" in table and "pip install mbpo_lit[bench]" in table


def test_with_gradient_checkpointing_the_shared_prefix_still_encodes_each_image_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = BenchConfig(
        group_size=2, prompts=2, max_new_tokens=3, beta=0.04, steps=1, warmup=0, gradient_checkpointing=True
    )
    path = bench.checkpoint(cfg)
    fast, rowwise = bench.bench_mbpo(cfg, path, True), bench.bench_mbpo(cfg, path, False)
    assert fast["gradient_checkpointing"] and rowwise["gradient_checkpointing"]
    assert fast["vision_calls_per_step"] == 1 and fast["images_encoded_per_step"] == cfg.prompts
    assert rowwise["images_encoded_per_step"] == cfg.prompts * (1 + 2 * cfg.group_size)


def test_trl_can_be_skipped():
    assert bench.bench_trl(BenchConfig(trl=False), "unused") == {"unavailable": "skipped (--trl false)"}


def test_step_stats_report_median_and_spread_after_the_warmup():
    stats = step_stats([9.0, 3.0, 1.0, 2.0], warmup=1)
    assert stats["step_s"] == 2.0 and stats["step_s_min"] == 1.0 and stats["step_s_max"] == 3.0
    assert stats["steps_measured"] == 3 and stats["step_times_s"] == [3.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="no measured step"):
        step_stats([1.0], warmup=1)


def test_trl_side_runs_on_the_tiny_checkpoint(tmp_path, monkeypatch):
    """TRL's GRPOTrainer, one step on the tiny 4-bit checkpoint, where trl is installed (`mbpo_lit[bench]`)."""
    pytest.importorskip("trl")
    monkeypatch.chdir(tmp_path)
    cfg = BenchConfig(group_size=2, prompts=2, max_new_tokens=3, beta=0.04, steps=1, warmup=0)
    out = bench.train_trl(cfg, bench.checkpoint(cfg))  # in this process: the isolation only separates memory
    assert out["step_s"] > 0 and out["generated_tokens_per_s"] > 0 and out["peak_memory_mb"] > 0
    # TRL: generation on G copies of each prompt, then the policy and the reference pass, each from pixels.
    assert out["vision_calls_per_step"] == 3
    assert out["images_encoded_per_step"] == 3 * cfg.prompts * cfg.group_size
    # TRL casts the LoRA weights of a quantized model to bf16; "match" trains them in fp32, as mbpo_lit does.
    assert out["lora_dtype_from_trl"] == ["torch.bfloat16"] and out["lora_dtype_trained"] == ["torch.float32"]
    assert out["trl_unmatched"]


def test_sections_run_only_what_is_asked_and_image_size_sets_the_prompt_length(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = BenchConfig(sections=("padding",), image_size=56, out=str(tmp_path / "bench.json"))
    results = run(cfg)
    for side in ("mbpo_lit", "rowwise", "trl", "pgd", "mining", "mine_sizes"):
        assert results[side] == {"unavailable": "skipped (--sections)"}
    assert results["padding"]["plain_padding_fraction"] > 0
    assert set(results["ratios"]) == {"padding_length_grouped_vs_plain"}
    assert "GRPO step: skipped" in format_results(results)
    # Qwen-VL merges 2x2 patches of 14 px: 56 px is 4 image tokens, the tiny default's 112 px is 16.
    small = bench.prompt_tokens(cfg, bench.checkpoint(cfg))
    default = bench.prompt_tokens(BenchConfig(), bench.checkpoint(BenchConfig()))
    assert default - small == 16 - 4
    with pytest.raises(ValueError, match="multiple of 28"):
        bench.checkpoint(BenchConfig(image_size=100))


@pytest.mark.parametrize("preset", sorted(sweep.PRESETS))
def test_every_sweep_row_is_a_valid_bench_command_line(preset):
    """Each row's options parse into a BenchConfig with the values it names (a typo fails here, not hours into
    a GPU session)."""
    from mbpo_lit import cli

    rows = sweep.PRESETS[preset]["rows"]
    configs = {name: cli.parse(BenchConfig, sweep.PRESETS[preset]["common"] + args) for name, args in rows.items()}
    steps = {name: c for name, c in configs.items() if c.sections == ("grpo",)}
    if preset == "cpu":
        assert steps == configs
        assert sorted({c.group_size for c in configs.values()}) == [4, 8, 16]
        assert {c.size for c in configs.values()} == {"tiny", "small"} and configs["small-224px-g8"].image_size == 224
        assert configs["small-g8-checkpointing"].gradient_checkpointing
    else:
        assert {(c.quantization, c.gradient_checkpointing) for c in steps.values()} == {
            (q, gc) for q in ("none", "4bit") for gc in (False, True)
        }
        assert configs["mining-bf16"].sections == ("pgd", "mining", "mine_sizes")
        gc4 = configs["precision-4bit-gc"]  # as the 7B recipes train
        assert gc4.sections == ("precision",) and gc4.quantization == "4bit" and gc4.gradient_checkpointing
        assert all(c.precision == "bf16" and c.size == "small" for c in configs.values())


def test_sweep_table_has_one_row_per_run_with_the_ratios(tmp_path, monkeypatch):
    def fake_result(g, trl):
        side = {"step_s": 1.0 * g, "peak_memory_mb": 100.0}
        return {
            "config": {"group_size": g, "prompts": 1, "gradient_checkpointing": False},
            "prompt_tokens": 41,
            "mbpo_lit": side,
            "rowwise": {"step_s": 4.0 * g, "peak_memory_mb": 200.0},
            "trl": {"step_s": 5.0 * g, "peak_memory_mb": 300.0} if trl else {"unavailable": "skipped"},
            "ratios": {"images_encoded_per_distinct_image": 1.0, "trl_images_encoded_per_distinct_image": 24.0},
        }

    mining = {
        "config": {"precision": "bf16"},
        "mbpo_lit": {"unavailable": "skipped"},
        "pgd": {"overhead_ratio": 1.5},
        "mining": {"images_per_s": 12.25, "efficiency": 1.0, "pgd_vs_bare_forward_backward": 1.2},
        "mine_sizes": {"mixed_vs_one_size_throughput": 0.9},
    }
    text = sweep.table({"a": fake_result(4, True), "b": fake_result(8, False), "m": mining})
    lines = text.splitlines()
    assert len(lines) == 8 and lines[-1] == "| m | bf16 | 1.50 | 12.2 | 1.00 | 1.20 | 0.90 |"
    assert "| a | 4 | 1 x 41 | off | 4.000 | 16.000 | 20.000 | 0.25x | 0.20x | 1, 24 | 100, 200, 300 |" == lines[2]
    assert lines[3].startswith("| b | 8 |") and "| - |" in lines[3]
    monkeypatch.setattr(sweep, "run_row", lambda name, args, out: fake_result(4, True))
    with pytest.raises(SystemExit, match="tiny-g5"):
        sweep.main(["--only", "[tiny-g5]", "--out", str(tmp_path)])
    assert list(sweep.main(["--only", "[tiny-g8]", "--out", str(tmp_path)])) == ["tiny-g8"]
    assert (tmp_path / "sweep.md").read_text().count("| tiny-g8 |") == 1


def test_the_precision_section_trains_the_adapters_in_each_modes_dtype(tmp_path, monkeypatch):
    """fp32 and bf16-mixed train fp32 adapters, bf16-true casts them to bf16; each mode under its trainer precision
    (in this process: the isolation only separates the peak memory)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench.precision, "isolated", lambda fn, *args: fn(*args))
    cfg = BenchConfig(group_size=2, prompts=2, max_new_tokens=3, steps=1, warmup=0, sections=("precision",))
    out = bench.bench_precision(cfg, bench.checkpoint(cfg))
    dtypes = {mode: out[mode]["trainable_dtypes"] for mode in bench.PRECISIONS}
    assert dtypes == {"fp32": ["torch.float32"], "bf16-true": ["torch.bfloat16"], "bf16-mixed": ["torch.float32"]}
    assert [out[m]["trainer_precision"] for m in bench.PRECISIONS] == ["32-true", "bf16-true", "bf16-mixed"]
    assert [out[m]["load_precision"] for m in bench.PRECISIONS] == ["fp32", "bf16", "bf16"]
    assert all(out[m]["step_s"] > 0 and out[m]["peak_memory_mb"] > 0 for m in bench.PRECISIONS)
    vs = out["bf16_mixed_vs_bf16_true"]
    assert vs["step_time"] == out["bf16-mixed"]["step_s"] / out["bf16-true"]["step_s"]
    assert vs["peak_memory"] == out["bf16-mixed"]["peak_memory_mb"] / out["bf16-true"]["peak_memory_mb"]
    results = {k: {"unavailable": "skipped"} for k in ("mbpo_lit", "rowwise", "trl", "pgd", "mining", "mine_sizes")}
    results |= {"padding": {}, "precision": out}
    assert set(run_ratios(results)) == {
        f"bf16_mixed_vs_{b}_{m}" for b in ("bf16_true", "fp32") for m in ("step_time", "peak_memory")
    }
    text = sweep.table({"p": {"config": {}, "mbpo_lit": {"unavailable": "skipped"}, "precision": out}})
    assert text.count("| p |") == 3 and "| bf16-true |" in text and "x time" in text.splitlines()[-1]
