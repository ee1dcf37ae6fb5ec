"""A reward plug-in that only a recipe names (tests/test_schedule.py's YAML fit), as a user's package would hold."""

from mbpo_lit.core.rewards import Reward


class CharacterCount(Reward):
    """The completion's length in characters, divided by `scale`: varies within almost every group."""

    def __init__(self, weight: float = 1.0, scale: float = 10.0):
        super().__init__(weight)
        self.scale = scale

    def __call__(self, prompts, completions, records):
        return [len(c) / self.scale for c in completions]
