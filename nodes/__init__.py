"""The ComfyUI nodes of the Unlearn pack (issue 4). Registered by the root ``__init__.py``."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
