"""The benchmark command: it runs on the tiny checkpoint and its vision-tower counter counts what it names."""

import json

from mbpo_lit.bench import BenchConfig, format_results, run


def test_bench_counts_every_image_the_vision_tower_encodes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tiny checkpoint for the benchmark is written under ./runs
    cfg = BenchConfig(group_size=2, prompts=2, max_new_tokens=3, beta=0.04, steps=1, warmup=0, pgd_steps=1,
                      pgd_images=2, out=str(tmp_path / "bench.json"))
    results = run(cfg)
    m = results["mbpo_lit"]
    # One generation prefill per prompt image, then the policy and the reference pass over G x prompts
    # sequences: the redundancy issue 7 is to remove (the target is one encoding per distinct image).
    assert m["images_encoded_per_step"] == cfg.prompts * (1 + 2 * cfg.group_size)
    assert m["vision_calls_per_step"] == 3 and m["step_s"] > 0 and m["peak_memory_mb"] > 0
    assert results["pgd"]["overhead_ratio"] > 0 and "unavailable" in results["trl"]
    assert json.loads((tmp_path / "bench.json").read_text())["mbpo_lit"] == m
    assert "images_encoded_per_step" in format_results(results)
