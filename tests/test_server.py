"""The pack in the real ComfyUI server (``main.py --cpu --listen 127.0.0.1 --port <free>``): its
HTTP API lists our nodes, a prompt posted to /prompt runs, progress arrives on the websocket, and
the server's Cancel (/interrupt) stops training within a step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from unlearn_testkit import node_helpers as nh

pytestmark = pytest.mark.comfy

OUR_NODES = ("UnlearnEraseConcept", "UnlearnEraseConceptAdvanced", "UnlearnEraseConceptUCE",
             "UnlearnSaveLoRA", "UnlearnApplyErasure", "UnlearnCLIPLoader", "UnlearnCLIPScore",
             "UnlearnDirectionalSimilarity", "UnlearnProbe", "UnlearnReport", "UnlearnAttack")


def test_object_info_lists_every_node_with_its_inputs(comfy_server, comfy_host):
    info = comfy_server.get("/object_info")
    assert {k for k, v in info.items() if v["category"].startswith("unlearn")} == set(OUR_NODES)
    for name in OUR_NODES:
        node = info[name]
        cls = comfy_host.node_classes[name]
        assert node["category"] in ("unlearn", "unlearn/measure")
        assert node["display_name"].endswith("(Unlearn)")
        types = cls.INPUT_TYPES()
        assert list(node["input"]["required"]) == list(types["required"])
        assert list(node["input"].get("optional", {})) == list(types.get("optional", {}))
        assert node["output"] == list(cls.RETURN_TYPES)
        assert node["output_name"] == list(cls.RETURN_NAMES)
        assert node["description"] == cls.DESCRIPTION
    adv = info["UnlearnEraseConceptAdvanced"]["input"]
    assert adv["required"]["lr"][1]["tooltip"].startswith("AdamW learning rate")
    assert set(adv["optional"]) == {"concept_conditioning", "anchor_conditioning",
                                    "retain_conditioning", "judge_clip", "judge_vae"}
    assert adv["optional"]["judge_clip"][0] == "UNLEARN_CLIP"  # what CLIP Loader for Scores gives
    assert info["UnlearnSaveLoRA"]["output_node"] is True


def _progress_text(frame: bytes) -> dict | None:
    """A binary websocket frame of ComfyUI 0.3.x's progress text (event type 3: a big-endian
    uint32 type, a uint32 node-id length, the node id, the UTF-8 text), else None."""
    if len(frame) < 8 or int.from_bytes(frame[:4], "big") != 3:
        return None
    n = int.from_bytes(frame[4:8], "big")
    return {"node": frame[8:8 + n].decode(), "text": frame[8 + n:].decode()}


async def _run_over_websocket(server, prompt: dict, stop_after: int | None = None,
                              timeout: float = 300.0) -> tuple[str, list[tuple[str, dict]]]:
    """POST the prompt, collect websocket messages until it finishes. ``stop_after``: press the
    server's Cancel (POST /interrupt) once node 20 reports that many steps."""
    import aiohttp

    client_id = uuid.uuid4().hex
    messages: list[tuple[str, dict]] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.url}/ws?clientId={client_id}") as ws:
            async with session.post(f"{server.url}/prompt",
                                    json={"prompt": prompt, "client_id": client_id}) as r:
                reply = await r.json()
                assert r.status == 200, reply
            prompt_id = reply["prompt_id"]
            deadline = time.monotonic() + timeout
            interrupted = False
            while time.monotonic() < deadline:
                msg = await ws.receive(timeout=deadline - time.monotonic())
                if msg.type == aiohttp.WSMsgType.BINARY:
                    text = _progress_text(msg.data)
                    if text is not None:
                        messages.append(("progress_text", text))
                    continue  # other binary frames: previews
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                event, body = data["type"], data.get("data", {})
                messages.append((event, body))
                if (stop_after and not interrupted and event == "progress"
                        and body.get("node") == "20" and body["value"] >= stop_after):
                    async with session.post(f"{server.url}/interrupt") as r:
                        assert r.status == 200
                    interrupted = True
                if body.get("prompt_id") == prompt_id and (
                        event in ("execution_error", "execution_interrupted")
                        or (event == "executing" and body.get("node") is None)):
                    return prompt_id, messages
    raise TimeoutError(f"prompt did not finish in {timeout} s: {messages[-5:]}")


def test_prompt_runs_and_progress_arrives_on_the_websocket(comfy_server, comfy_host,
                                                           small_sd15_ckpt):
    prompt = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                             concepts="a lighthouse", steps=3)
    prompt_id, messages = asyncio.run(_run_over_websocket(comfy_server, prompt))
    progress = [(d["value"], d["max"]) for e, d in messages
                if e == "progress" and d.get("node") == "20"]
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert not [d for e, d in messages if e == "execution_error"]
    texts = [d["text"] for e, d in messages if e == "progress_text" and d["node"] == "20"]
    if "def send_progress_text" in (comfy_host.comfy_dir / "server.py").read_text():
        # 0.3.x shows a line under the node's bar: the step, the loss, the time left.
        assert texts and texts[-1].startswith("step 3/3 · loss "), texts
        assert texts[-1].endswith(" s left")
    else:
        assert texts == []
    executed = {d["node"] for e, d in messages if e == "executed"}
    assert "9" in executed  # SaveImage after the erased model
    history = comfy_server.get(f"/history/{prompt_id}")[prompt_id]
    assert history["outputs"]["9"]["images"]
    if "status" in history:
        assert history["status"]["status_str"] == "success"


def test_cancel_through_the_server_stops_training(comfy_server, comfy_host, small_sd15_ckpt):
    prompt = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                             concepts="a windmill", steps=200)
    _, messages = asyncio.run(_run_over_websocket(comfy_server, prompt, stop_after=1))
    events = [e for e, _ in messages]
    assert "execution_interrupted" in events and "execution_error" not in events
    steps = [d["value"] for e, d in messages if e == "progress" and d.get("node") == "20"]
    assert 1 <= max(steps) <= 3, steps  # stopped within a step or two of the press
    assert not any(e == "executed" and d.get("node") == "9" for e, d in messages)
