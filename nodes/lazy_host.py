"""``host``: the pack's ComfyUI adapter (``nodes/host.py``), imported on first use.

The node modules name ``host.run_erase`` and friends only inside the functions ComfyUI calls, so
they import -- and their pure parts (widgets to config, plots, name checks) are tested -- without
ComfyUI; ``host`` itself, the only module that imports ``comfy``/``folder_paths``, loads when a
node first runs inside a host.
"""

from __future__ import annotations

import importlib
from typing import Any


class _Host:
    def __getattr__(self, name: str) -> Any:
        module = importlib.import_module(".host", __package__)
        return getattr(module, name)


host = _Host()
