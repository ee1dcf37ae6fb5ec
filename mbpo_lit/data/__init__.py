"""Where records come from (`sources`: files, hub datasets; `benchmarks`: POPE, AMBER, A-OKVQA, VQAv2 in their
published layouts; `captions`: COCO images to describe) and the hybrid data module (`hybrid`)."""

# The benchmark layouts and CocoChair, so that a command resolves `--data Pope` / `--source VQAv2` by class name.
from mbpo_lit.data import benchmarks, captions  # noqa: F401
