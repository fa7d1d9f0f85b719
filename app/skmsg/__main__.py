"""``python -m skmsg``: the ``skmsg`` command."""

from __future__ import annotations

from . import main

raise SystemExit(main())
