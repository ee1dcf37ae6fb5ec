"""Where records come from (`sources`: files, hub datasets; `benchmarks`: POPE, AMBER, A-OKVQA, VQAv2 in their
published layouts; `suites`: MMStar, MMBench, AI2D, MME, the paper's table; `captions`: COCO images to describe;
`trl`: TRL's conversational and preference formats; `lazy`: records whose images are decoded when used; `opening`:
files, hub datasets and image headers) and the hybrid data module (`hybrid`)."""

# The benchmark layouts and CocoChair, so that a command resolves `--data Pope` / `--data MMStar` by class name.
from mbpo_lit.data import benchmarks, captions, suites, trl  # noqa: F401
