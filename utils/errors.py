"""One base class for every failure a user can fix: the command line prints its message in one line, no traceback."""


class PersonaLoraError(Exception):
    """A problem with the user's input or environment; str() says what went wrong and what to do."""


class FlagError(PersonaLoraError):
    """A command-line flag (or the notebook parameter behind it) is out of range; the message names it."""
