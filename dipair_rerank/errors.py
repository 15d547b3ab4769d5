"""The one exception type users see: a one-line message that names the file, line or id at fault."""


class DiPairError(Exception):
    """Bad input or a broken index. The CLI prints ``error: <message>`` and exits with status 2."""
