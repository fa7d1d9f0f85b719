"""Tests of the ``skmsg`` command (``skmsg_core.cli``): end to end over real sockets."""
