"""Test helpers, kept in one package so that no helper module can ever shadow a top-level module
of the ComfyUI host (ComfyUI has its own ``node_helpers``, ``server``, ``utils``, ``nodes``...;
a test folder on ``sys.path`` with a file of the same name breaks the host's imports)."""
