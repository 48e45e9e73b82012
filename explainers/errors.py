"""Errors a user can fix. Their message is one plain sentence, shown as is (CLI: ``error: ...``;
app: a gr.Error). Anything else escaping the engine is a bug."""


class UserError(ValueError):
    """Bad input: an image, a prompt, a parameter, a model name."""


class ModelLoadError(UserError):
    """A model could not be loaded; the message says what was tried and why it failed."""


def cli_error(error: Exception, path: object = "") -> str:
    """The one line a command prints after ``error:`` for a UserError or an OSError (e.g. an
    output folder that cannot be written, named by ``path`` when the error does not name it)."""
    if isinstance(error, OSError):
        return f"{error.strerror or error} ({getattr(error, 'filename', '') or path})"
    return str(error)
