"""The one exception type that the CLI turns into a single line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a recipe, a path, a flag or a file.

    The message must say what was wrong, where (file or field), and what to do.
    The CLI prints it as one line and exits with code 2, never with a traceback.
    """
