"""The one exception type that reaches the user as a single line (exit status 2).

Anything the user can get wrong — a config value, a file they point at — raises `UserError`
with a message that names the key or file and says what is allowed. The CLI prints
`nasalloc <command>: <message>` and exits 2; no traceback is shown.
"""


class UserError(Exception):
    """Bad input from the user: a config value, an override or a file they named."""
