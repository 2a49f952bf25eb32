"""The trainer's one failure type, below every other trainer module so none imports another for it."""


class TrainingFailed(RuntimeError):
    """The run cannot succeed by retrying (bad data, out of memory); the message says why."""
