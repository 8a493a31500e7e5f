"""The one exception type a user can cause; stages print it as a single line and exit non-zero."""


class PipelineError(Exception):
    """A problem with the user's input, params or files. The message names the file/row/key and the fix."""
