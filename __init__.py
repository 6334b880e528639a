"""Unlearn: erase concepts from Stable Diffusion 1.x models — a ComfyUI node pack.

ComfyUI imports this folder as a package (``custom_nodes/<folder>/__init__.py``) and reads
``NODE_CLASS_MAPPINGS``. Nodes are registered only when ComfyUI is importable, so the folder, its
core library ``unlearn_core`` and the tests import without ComfyUI. Inside the pack, imports are
relative: ComfyUI imports it under a module name taken from the folder's name.
"""

try:
    import comfy.model_patcher  # noqa: F401  (present only inside ComfyUI)
    import folder_paths  # noqa: F401
except ImportError:
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}
else:
    from .nodes.registry import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
