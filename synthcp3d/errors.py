"""The one exception type for bad user input: the command line prints its message as a single line."""

from __future__ import annotations


class SynthCPInputError(ValueError):
    """Raised at a boundary (file, folder, array, config) when the input cannot be used.

    The message is a complete sentence a user can act on, naming the offending path or value. The command
    line turns it into ``error: <message>`` and a non-zero exit status, never a traceback.
    """
