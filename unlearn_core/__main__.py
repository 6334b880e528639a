"""``python -m unlearn_core`` is the ``unlearn`` command (and so works under ``torchrun -m``)."""

from .cli import main

raise SystemExit(main())
