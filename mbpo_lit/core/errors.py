"""The errors that are a user's mistake, not a bug: the commands print them in one line (`cli.user_errors`)."""


class SettingsError(ValueError):
    """An out-of-range setting, named by its option or recipe key (a user's mistake: one line, no traceback)."""
