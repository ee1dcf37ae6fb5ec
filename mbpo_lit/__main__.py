"""`python -m mbpo_lit <command> [options]`: the single entry point. Every command answers `--help`,
`--config FILE.yaml` and `--print_config`."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "fit": ("mbpo_lit.fit", "train with hybrid GRPO (LightningCLI); no options: the embedded default"),
    "mine": ("mbpo_lit.mine", "mine adversarial hard-negative pairs (PGD or a noise baseline)"),
    "evaluate": ("mbpo_lit.evaluate", "judge-free evaluation of a model (+ adapter) on an eval set"),
    "bench": ("mbpo_lit.experiments.bench", "time a GRPO step and PGD (both prefix layouts)"),
    "bench-sweep": ("mbpo_lit.experiments.sweep", "the GRPO step benchmark over a preset grid (CPU or GPU)"),
    "ablate": ("mbpo_lit.experiments.ablate", "the ablation grid on the synthetic world, with CIs"),
    "plots": ("mbpo_lit.experiments.plots", "plots of an ablation directory"),
    "captions": ("mbpo_lit.experiments.captions", "which caption mentions an adapter made hallucinated (world)"),
    "base-model": ("mbpo_lit.testbed.base_model", "build the synthetic world's biased base model"),
    "tiny": ("mbpo_lit.testbed.tiny", "write a tiny random checkpoint of a supported architecture"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        print("usage: python -m mbpo_lit <command> [--help] [--config FILE] [--print_config] [options]\n\ncommands:")
        print("\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
            raise SystemExit(2)
        return
    module = importlib.import_module(COMMANDS[argv[0]][0])
    if argv[0] == "fit":
        sys.argv = [sys.argv[0], *argv]  # LightningCLI reads sys.argv itself (DDP relaunches this command line)
        module.main()
    else:
        module.main(argv[1:])


if __name__ == "__main__":
    main()
