"""Errors a user can fix. Their message is one plain sentence, shown as is (CLI: ``error: ...``;
app: a gr.Error). Anything else escaping the engine is a bug."""


class UserError(ValueError):
    """Bad input: an image, a prompt, a parameter, a model name."""


class ModelLoadError(UserError):
    """A model could not be loaded; the message says what was tried and why it failed."""
