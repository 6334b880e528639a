"""The ComfyUI nodes of the Unlearn pack; the root ``__init__.py`` registers them from
``nodes.registry`` when ComfyUI is there.

``host`` is the only module here that imports ComfyUI, and nothing imports it at import time
(``lazy_host``): every other module -- the node classes, widgets to config, plots, presets -- imports
without ComfyUI, so it is tested in milliseconds. A node's execute maps widgets to a config, makes
one host call and returns outputs.
"""
