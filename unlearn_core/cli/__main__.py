"""``python -m unlearn_core.cli`` is the ``unlearn`` command, as ``python -m unlearn_core`` is."""

from . import main

raise SystemExit(main())
