"""The one exception type for bad input."""


class TomosiftError(Exception):
    """Bad input or an unmet precondition.

    The message is a single line that names the file (or config key) and the problem,
    so that command-line users and Snakemake logs show it as is.
    """
