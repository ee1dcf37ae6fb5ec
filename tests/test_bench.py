"""The benchmark command: both layouts run on the tiny checkpoint and the vision-tower counter counts what it names."""

import json

from mbpo_lit.experiments.bench import BenchConfig, format_results, run


def test_bench_counts_every_image_the_vision_tower_encodes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tiny checkpoint for the benchmark is written under ./runs
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
    r = results["ratios"]
    assert r["images_encoded_per_distinct_image"] == 1 and r["rowwise_images_encoded_per_distinct_image"] == 5
    assert r["step_time_vs_rowwise"] == fast["step_s"] / rowwise["step_s"]
    assert results["pgd"]["overhead_ratio"] > 0 and "unavailable" in results["trl"]
    assert r["step_time_vs_trl"] == "unavailable"
    assert json.loads((tmp_path / "bench.json").read_text())["mbpo_lit"] == fast
    assert "images_encoded_per_distinct_image" in format_results(results)
