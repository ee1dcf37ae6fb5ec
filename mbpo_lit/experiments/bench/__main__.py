"""`python -m mbpo_lit.experiments.bench`, the same as `python -m mbpo_lit bench`."""

from mbpo_lit.experiments.bench.run import main

main()
