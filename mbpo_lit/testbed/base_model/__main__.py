"""`python -m mbpo_lit.testbed.base_model`, the same as `python -m mbpo_lit base-model`."""

from mbpo_lit.testbed.base_model import main

main()
