"""Padding in the benchmark: the share of prompt tokens that are padding in batches of mixed image sizes, drawn
plainly and with length grouping (`HybridDataModule(length_group_batches=...)`)."""

from __future__ import annotations

from mbpo_lit.experiments.bench.config import BenchConfig


def bench_padding(cfg: BenchConfig, path: str, batches: int = 32, group: int = 16) -> dict:
    """Share of prompt tokens that are padding, in batches of `cfg.prompts` world prompts whose images come
    in four sizes (112-280 px, as a dataset of mixed resolutions), drawn plainly and length-grouped."""
    from mbpo_lit.data.hybrid import HybridBatches
    from mbpo_lit.testbed.questions import build_records
    from mbpo_lit.testbed.world import WorldConfig
    from mbpo_lit.vlm.arch import load_processor
    from mbpo_lit.vlm.chat import encode_prompts

    processor = load_processor(path, cfg.arch)
    sizes = (112, 168, 224, 280)
    if hasattr(processor.image_processor, "merge_size"):  # Qwen-VL: keep each image's resolution, as the 7B
        processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 280 * 280}  # processors do
    records = [
        dict(r, image=r["image"].resize((sizes[i % 4],) * 2))
        for i, r in enumerate(build_records(WorldConfig(), "train", 256))
    ]
    out = {}
    for name, m in (("plain", 1), ("length_grouped", group)):
        data = HybridBatches([], records, 0, cfg.prompts, batches, seed=0, group_batches=m)
        pad = total = 0
        for i in range(batches):
            online = data[i]["online"]
            questions, images = [r["question"] for r in online], [r["image"] for r in online]
            mask = encode_prompts(processor, questions, images)["attention_mask"]
            pad, total = pad + int((mask == 0).sum()), total + mask.numel()
        out[f"{name}_padding_fraction"] = pad / total
    return out
