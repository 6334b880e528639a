"""The real ComfyUI server as a subprocess, and a headless Chromium driven over the DevTools
protocol (CDP, over a websocket with aiohttp -- no browser-automation package needed).

``ComfyServer`` runs ``main.py --cpu --listen 127.0.0.1 --port <free>`` from the test host's
folder, with the in-process host's session folders (models, our pack under custom_nodes/) given
through ``--extra-model-paths-config``, and its own output/temp/input folders. Nothing in the
host's folder is edited (the 2024 server keeps its ``user/`` folder there; it writes to it only
when UI settings change, which these tests do not do).

``Browser`` starts Debian's ``chromium`` headless with a fresh profile (flags: --headless
--no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
--disable-component-update --disable-sync) and gives one page: ``navigate``, ``evaluate`` (awaits
promises), ``screenshot``, and the page's uncaught exceptions and console errors.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """``main.py`` of the test host, listening on 127.0.0.1:<free port>."""

    def __init__(self, comfy_dir: Path, work_dir: Path, models_dir: Path,
                 custom_nodes_dir: Path) -> None:
        self.comfy_dir = comfy_dir
        self.work_dir = work_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        for kind in ("output", "temp", "input"):
            (work_dir / kind).mkdir(parents=True, exist_ok=True)
        kinds = sorted(p.name for p in models_dir.iterdir() if p.is_dir())
        lines = ["unlearn_tests:", f"    base_path: {models_dir}"]
        lines += [f"    {k}: {k}" for k in kinds]
        lines.append(f"    custom_nodes: {custom_nodes_dir}")
        self.config = work_dir / "extra_model_paths.yaml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log_path = work_dir / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> ComfyServer:
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--disable-auto-launch",
               "--output-directory", str(self.work_dir / "output"),
               "--temp-directory", str(self.work_dir / "temp"),
               "--input-directory", str(self.work_dir / "input"),
               "--extra-model-paths-config", str(self.config)]
        cmd += self._user_directory()
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("UNLEARN_TEST_THREADS", "1"),
               "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited ({self.proc.returncode}):\n{self.log()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI server did not answer in {timeout} s:\n{self.log()}")

    def _user_directory(self) -> list[str]:
        """On hosts that take ``--user-directory`` (0.3.x), a fresh one in the work folder whose
        settings say the first-run tutorial is done: a new user's frontend otherwise opens its
        "Get Started with a Template" dialog once the app has loaded (``Comfy.TutorialCompleted``
        false), at a moment that races the tests' own dialog checks. The host's folder is left
        alone. The 2024 host has neither the flag nor the dialog."""
        args = (self.comfy_dir / "comfy" / "cli_args.py").read_text(encoding="utf-8")
        if '"--user-directory"' not in args:
            return []
        user = self.work_dir / "user"
        (user / "default").mkdir(parents=True, exist_ok=True)
        (user / "default" / "comfy.settings.json").write_text(
            json.dumps({"Comfy.TutorialCompleted": True}))
        return ["--user-directory", str(user)]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def get(self, path: str, timeout: float = 30) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, data: dict, timeout: float = 30) -> Any:
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
            return json.loads(body) if body else None


# ---- Chromium over CDP ----------------------------------------------------------------------

def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page, driven over CDP. Use inside one asyncio loop."""

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1600,1000",
             "--remote-debugging-port=0")

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.profile = Path(tempfile.mkdtemp(prefix="unlearn-chromium-"))
        self.proc: subprocess.Popen | None = None
        self.session = None
        self.ws = None
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self.exceptions: list[str] = []
        self.console_errors: list[str] = []
        self._reader: asyncio.Task | None = None

    async def start(self, timeout: float = 60.0) -> Browser:
        import aiohttp

        self.proc = subprocess.Popen(
            [self.executable, *self.FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Chromium did not start (no DevToolsActivePort)")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        page = None
        while page is None:
            async with self.session.get(f"http://127.0.0.1:{port}/json/list") as r:
                targets = await r.json()
            page = next((t for t in targets if t.get("type") == "page"), None)
            if page is None:
                await asyncio.sleep(0.1)
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        await self.send("Runtime.enable")
        await self.send("Page.enable")
        return self

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.exceptions.append(details.get("exception", {}).get("description")
                                       or details.get("text", ""))
            elif data.get("method") == "Runtime.consoleAPICalled":
                if data["params"]["type"] == "error":
                    self.console_errors.append(" ".join(
                        str(a.get("value", a.get("description", ""))) for a in data["params"]["args"]))

    async def send(self, method: str, timeout: float = 60.0, **params: Any) -> dict:
        self._next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = fut
        await self.ws.send_json({"id": self._next_id, "method": method, "params": params})
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise RuntimeError(f"CDP {method}: {reply['error']}")
        return reply.get("result", {})

    async def evaluate(self, expression: str, timeout: float = 60.0) -> Any:
        result = await self.send("Runtime.evaluate", timeout=timeout, expression=expression,
                                 awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError("page script failed: " + (
                details.get("exception", {}).get("description") or details.get("text", "")))
        return result["result"].get("value")

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError):
                value = await self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied: {expression}")
            await asyncio.sleep(0.2)

    async def screenshot(self, path: Path) -> Path:
        result = await self.send("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
