"""Everything the scripts share: data, losses, the training engine, checkpoints, routing."""


class UserError(Exception):
    """A problem with the user's input (data, flags, checkpoint): printed as one line, no traceback."""
