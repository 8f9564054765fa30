"""Errors a user can fix: printed as one line, never as a traceback."""


class UserError(Exception):
    """Bad input or environment; the message names what is wrong and how to fix it."""
