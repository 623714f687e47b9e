"""The errors a user can act on. Library code raises them (or ``DataError``, ``CheckpointError``,
``ExportError``, subclasses of ``Error`` kept beside the code they belong to) with a message that
says what went wrong and what to do instead; the commands alone turn them into one-line
``error: ...`` messages (``cli.REPORTED_ERRORS``). Anything else is a bug, and gets a traceback."""


class Error(Exception):
    """A request, a file or a run that cannot go on; the message says why."""


class UsageError(Error):
    """A request that cannot be honoured (flags that contradict each other or the checkpoint); the
    message names the flags and says what to do instead."""


class TrainingError(Error):
    """Training cannot go on (a non-finite loss, a checkpoint or log that could not be written); the
    message says at which step, and which checkpoint is intact."""
