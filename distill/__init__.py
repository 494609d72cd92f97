"""Everything the scripts share: data, losses, the training engine, checkpoints, routing."""


class UserError(Exception):
    """A problem with the user's input (data, flags, checkpoint): printed as one line, no traceback."""


def flag_of(name: str) -> str:
    """The flag a setting is given by, for messages: 'val_size' -> '--val-size'."""
    return '--' + name.replace('_', '-')
