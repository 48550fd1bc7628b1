"""Errors that end a run with one line for the user instead of a traceback."""


class UsageError(Exception):
    """Bad input: the message names the flag and the fix; exit code 2."""


class Diverged(Exception):
    """NaN or inf in the states or gradients: training stops, the last good checkpoint stays."""
