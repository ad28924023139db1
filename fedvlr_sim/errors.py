"""The one exception type the CLI turns into a one-line message and exit code 2."""


class FedVLRError(Exception):
    """A user-facing problem: bad input file, unknown name, impossible configuration.

    The message must fit on one line and name the file or option and what was expected.
    """
