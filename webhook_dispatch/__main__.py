"""``python -m webhook_dispatch``: the same as the ``webhook-dispatch`` command."""

from .cli import main

raise SystemExit(main())
