"""Shared pytest fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # so tests can `import comfy_host`
    sys.path.insert(0, str(TESTS_DIR))


# ============================================================================================
# ComfyUI host fixtures (see tests/unlearn_testkit/comfy_host.py)
#
# One real ComfyUI per test session, booted headless against a session temp folder, with our
# pack loaded by ComfyUI's own custom-node loader. Tests marked `comfy` need it.
#   comfy_host            -> comfy_host.ComfyHost (run prompts, node classes, folders)
#   small_sd15_ckpt       -> file name of a small SD-1.x checkpoint in the host's checkpoints/
#   full_sd15_unet        -> file name of a full-size SD-1.5 UNet in the host's unet/ (slow)
# Model files are built once and cached (tests/unlearn_testkit/comfy_host.py: cached_model_file).
# Env: COMFYUI_PATH (use another ComfyUI), UNLEARN_TEST_THREADS (torch threads, default 1),
#      UNLEARN_FIXTURE_CACHE (where built model files are cached).
# ============================================================================================

def comfyui_label() -> str:
    """The test host's name, as test ids and the report header show it: ``comfyui-0.3.64`` (the
    version file of ComfyUI 0.3 and later), ``comfyui-a28a9dc-2024-03`` (the bundled March-2024
    copy, by its commit), else the folder's name. Read from files: nothing is booted."""
    import json

    from unlearn_testkit import comfy_host as ch

    installer = ch._installer()
    path = installer.comfyui_path()
    version = installer.tree_version(path)
    if version != "unknown":
        return f"comfyui-{version}"
    marker = installer.installed_marker(path) or {}
    if marker.get("comfyui_commit") == installer.COMFYUI_COMMIT:
        return f"comfyui-{installer.COMFYUI_COMMIT}-2024-03"
    try:
        return "comfyui-" + json.loads((path / installer.MARKER).read_text())["version"]
    except (OSError, ValueError, KeyError):
        return f"comfyui-{path.name}"


def pytest_report_header(config):
    return f"ComfyUI test host: {comfyui_label()}"


def pytest_generate_tests(metafunc):
    # Every test that boots the host carries the host's name in its id ("[comfyui-0.3.64]"), so
    # a report from either host's run says which host each result is from.
    if "comfyui" in metafunc.fixturenames:
        metafunc.parametrize("comfyui", [comfyui_label()], indirect=True, scope="session")


@pytest.fixture(scope="session")
def comfyui(request) -> str:
    """The label of the ComfyUI host this session tests (see comfyui_label)."""
    return request.param


@pytest.fixture(scope="session")
def comfy_host(comfyui, tmp_path_factory):
    """The real ComfyUI host for this session (installed on first use)."""
    import torch
    from unlearn_testkit import comfy_host as ch

    torch.set_num_threads(int(os.environ.get("UNLEARN_TEST_THREADS", "1")))
    work = tmp_path_factory.mktemp("comfyui")
    return ch.ComfyHost.get(work)


@pytest.fixture(scope="session")
def small_sd15_ckpt(comfy_host) -> str:
    """A small SD-1.x checkpoint (44M-param UNet, SD-1 CLIP, TAESD) that CheckpointLoaderSimple reads."""
    from unlearn_testkit import comfy_host as ch

    name = "unlearn_small_sd15.safetensors"
    ch.cached_model_file(comfy_host.model_dir("checkpoints") / name,
                         ch.write_small_sd15_checkpoint, seed=0)
    comfy_host.refresh_file_lists()
    return name


@pytest.fixture(scope="session")
def full_sd15_unet(comfy_host) -> str:
    """A full-size SD-1.5-shaped UNet (random weights, fp16 file) that UNETLoader reads."""
    from unlearn_testkit import comfy_host as ch

    name = "unlearn_full_sd15_unet.safetensors"
    ch.cached_model_file(comfy_host.model_dir("unet") / name, ch.write_full_sd15_unet, seed=0)
    comfy_host.refresh_file_lists()
    return name


@pytest.fixture
def tiny_training(comfy_host, monkeypatch):
    """Shrink the pack's "fast" recipe -- where the simple Erase node takes its hidden settings --
    to CPU size (8x8 latents, 4-step trajectories) for one test. Patches the pack's own copy of
    unlearn_core (ComfyUI imported it under its own module name: ``node_helpers.pack_module``)."""
    from unlearn_testkit import node_helpers

    recipes = node_helpers.pack_module("unlearn_core.config").RECIPES
    monkeypatch.setitem(recipes, "fast", {**recipes["fast"], **node_helpers.TINY_TRAINING})
    return node_helpers.TINY_TRAINING


@pytest.fixture(scope="session")
def comfy_server(comfy_host, small_sd15_ckpt, tmp_path_factory):
    """The real ComfyUI server (main.py) on a free port, sharing the host's model folders and
    our pack; its own output folders. Stopped at the end of the session."""
    from unlearn_testkit.comfy_server import ComfyServer

    server = ComfyServer(comfy_host.comfy_dir, tmp_path_factory.mktemp("server"),
                         comfy_host.models_dir, comfy_host.work_dir / "custom_nodes")
    server.start()
    yield server
    server.stop()


# ============================================================================================
# end of ComfyUI host fixtures
# ============================================================================================
