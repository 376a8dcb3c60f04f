"""One exception type for every problem a user can fix.

The message is a single line that names the file or flag at fault and says what to do, so the
CLI and the web app can show it as is, without a traceback.
"""


class SamPalError(Exception):
    """A user-fixable problem: bad input file, bad flag, missing weights."""
