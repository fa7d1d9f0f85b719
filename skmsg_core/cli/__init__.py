"""The ``skmsg`` command."""


def main() -> None:
    """Entry point of the ``skmsg`` command."""
    raise SystemExit("skmsg: the proxy command is being built")
