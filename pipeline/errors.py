"""The one exception type a user can cause; stages print it as a single line and exit non-zero."""


class PipelineError(Exception):
    """A problem with the user's input, params or files. The message names the file/row/key and the fix."""


ERROR_FILE_ENV = "KD_ERROR_FILE"  # where a rank started by `relaunch_under_torchrun` leaves its one-line user error
