"""The single error type normprobe raises for anything a user can fix."""


class NormprobeError(Exception):
    """A problem with the user's input, model or environment.

    The message is one line that says what is wrong and, where possible, how to fix it.
    The CLI prints it without a traceback and exits with `exit_code`.
    """

    exit_code = 1
