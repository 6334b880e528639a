"""The pack's node table, as ComfyUI reads it (``NODE_CLASS_MAPPINGS``, display names).

The measuring nodes load separately: if they fail to import (say, a missing optional
dependency), the erase nodes still register and the console says why.
"""

import logging

from . import erase, erasure_io

NODE_CLASS_MAPPINGS: dict = {**erase.NODE_CLASS_MAPPINGS, **erasure_io.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS: dict = {
    **erase.NODE_DISPLAY_NAME_MAPPINGS, **erasure_io.NODE_DISPLAY_NAME_MAPPINGS,
}

try:
    from . import metrics
except Exception:  # any import failure: keep the erase nodes, report the cause
    logging.getLogger(__name__).exception("Unlearn: the measuring nodes could not be loaded")
else:
    NODE_CLASS_MAPPINGS.update(metrics.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(metrics.NODE_DISPLAY_NAME_MAPPINGS)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
