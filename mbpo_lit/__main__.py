"""`python -m mbpo_lit <command> [options]`: the single entry point. Every command answers `--help`,
`--config FILE.yaml` and `--print_config`."""

from __future__ import annotations

import importlib
import sys

# Command -> (module with `main(argv)`, group, one line). Groups: the method a user runs, the synthetic testbed,
# and the experiments that measure the method.
COMMANDS = {
    "fit": ("mbpo_lit.fit", "method", "train with hybrid GRPO (LightningCLI); no options: the embedded default"),
    "mine": ("mbpo_lit.mine", "method", "mine adversarial hard-negative pairs (PGD or a noise baseline)"),
    "evaluate": ("mbpo_lit.evaluate", "method", "judge-free evaluation of a model (+ adapter) on an eval set"),
    "export": ("mbpo_lit.export", "method", "merge a fit's adapters into its base model: a checked checkpoint + card"),
    "base-model": ("mbpo_lit.testbed.base_model", "testbed", "build the synthetic world's biased base model"),
    "tiny": ("mbpo_lit.testbed.tiny", "testbed", "write a tiny random checkpoint of a supported architecture"),
    "ablate": ("mbpo_lit.experiments.ablate", "experiments", "the ablation grid on the synthetic world, with CIs"),
    "plots": ("mbpo_lit.experiments.plots", "experiments", "plots of an ablation directory"),
    "captions": ("mbpo_lit.experiments.captions", "experiments", "caption mentions an adapter made hallucinated"),
    "bench": ("mbpo_lit.experiments.bench", "experiments", "time a GRPO step and PGD (both prefix layouts)"),
    "bench-sweep": ("mbpo_lit.experiments.sweep", "experiments", "the GRPO step benchmark over a preset grid"),
}
GROUPS = {"method": "the method", "testbed": "the synthetic testbed", "experiments": "experiments"}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m mbpo_lit <command> [--help] [--config FILE] [--print_config] [options]"]
    for group, title in GROUPS.items():
        lines += ["", f"{title}:"]
        lines += [f"  {name:<{width}}  {text}" for name, (_, g, text) in COMMANDS.items() if g == group]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(usage())
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
