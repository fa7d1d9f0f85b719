"""Tests of the ``skmsg`` command (``skmsg``): end to end over real sockets."""
