"""`python -m mbpo_lit bench`: how fast the hot paths run, in numbers (a benchmark command, not a test).

1. The hybrid GRPO step, three ways on the same settings (checkpoint, prompts and images, G, lengths, beta,
   loss aggregation, LoRA, quantization):
   - mbpo_lit as shipped (`MBPOModule.training_step` under a real Lightning Trainer, `share_prefix=True`: each
     distinct image encoded once per step, each prompt prefilled once for its completions; vlm/shared_prefix.py);
   - mbpo_lit "rowwise" (`share_prefix=False`: one row per completion, every pass from pixels);
   - TRL's GRPOTrainer (when `trl` is installed: `pip install mbpo_lit[bench]`; `--trl false` skips it).
   For each: wall time per optimizer step (median and spread of `steps` steps after `warmup` unmeasured ones),
   samples/s, generated tokens/s, peak memory, and the vision tower's calls and images encoded per step (a forward
   hook on the architecture's vision module). Each side runs in its own process, so the peak memory is its own.
   `trl_unmatched` lists what could not be set the same on the TRL side.
2. PGD: images/s at a fixed number of steps (no early stop), and its time relative to the bare forward+backward of
   the same steps on the same batch (PGD adds the projection and the codec on top of that).
3. Mining with the default config (`mining`): `Miner.mine` on the world's shipped base model with early stop, its
   images/s, the sample-steps PGD executed against those the samples needed, and PGD's time against a bare
   forward+backward of the same batches (the answer checks are what PGD adds).
4. Mining on real image sizes: `Miner.mine` on scikit-image's sample photographs (thumbnailed to 160 px, several
   sizes) in one batch, as the miner attacks a chunk, against the same photographs at one size (the ceiling of
   batching on the machine) and against one image at a time.
5. Padding: the share of prompt tokens that are padding in batches of mixed image sizes, drawn plainly and
   with length grouping (`HybridDataModule(length_group_batches=...)`).
6. Precision (`--sections '[precision]'`, not run by default): the shared-prefix GRPO step's time and peak memory
   under Lightning's "bf16-true" and "bf16-mixed" (the 7B recipes' setting) and fp32, each in its own process.

Results print as a table with the ratios and go to `--out` as JSON; the measured numbers are in
results/performance.md. One module per side: `config` (the settings), `step` (the mbpo_lit GRPO step and what
both sides measure with), `trl` (TRL's GRPOTrainer), `pgd` (PGD and mining on mixed sizes), `padding`, `precision`, and
`run` (every measurement, the ratios, the table, the command).

    python -m mbpo_lit bench --group_size 8 --steps 5
    python -m mbpo_lit bench --size small --precision bf16 --out runs/bench/gpu.json
    python -m mbpo_lit bench --gradient_checkpointing true --trl false   # as the 7B recipes train
    python -m mbpo_lit bench --sections '[precision]'   # bf16-mixed against bf16-true and fp32
"""

from __future__ import annotations

from mbpo_lit.experiments.bench.config import BENCH_LORA, BenchConfig
from mbpo_lit.experiments.bench.padding import bench_padding
from mbpo_lit.experiments.bench.pgd import PHOTOS, bench_mine_sizes, bench_mining, bench_pgd, photo_records
from mbpo_lit.experiments.bench.precision import PRECISIONS, bench_precision
from mbpo_lit.experiments.bench.run import checkpoint, format_results, main, prompt_tokens, ratios, run
from mbpo_lit.experiments.bench.step import bench_mbpo, count_vision_calls, peak_memory_mb, step_stats
from mbpo_lit.experiments.bench.trl import TRL_MISSING, TRL_UNMATCHED, bench_trl, train_trl, trl_available

__all__ = [
    "BENCH_LORA",
    "PHOTOS",
    "PRECISIONS",
    "TRL_MISSING",
    "TRL_UNMATCHED",
    "BenchConfig",
    "bench_mbpo",
    "bench_mine_sizes",
    "bench_mining",
    "bench_padding",
    "bench_pgd",
    "bench_precision",
    "bench_trl",
    "checkpoint",
    "count_vision_calls",
    "format_results",
    "main",
    "peak_memory_mb",
    "photo_records",
    "prompt_tokens",
    "ratios",
    "run",
    "step_stats",
    "train_trl",
    "trl_available",
]
