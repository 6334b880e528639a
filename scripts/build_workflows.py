#!/usr/bin/env python3
"""Write the example workflows in ``example_workflows/`` (UI format: what the web UI saves and loads by
drag and drop). Edit the graphs here and rerun; tests/test_workflows.py checks that the files are
this script's output, that every node's slots and widget values fit the real node classes, that
ComfyUI executes each of them, and that the real web UI loads them without a missing-node or
error dialog.

Settings are for SD 1.4/1.5 on a consumer GPU: 512x512 images, 25 sampler steps, a fixed seed so
the before and after images differ only by the erasure; training settings are the nodes' defaults
(the core's "fast" preset; see nodes/widgets.py).

Usage: python scripts/build_workflows.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository folder: its nodes package imports without ComfyUI

from nodes.fields import ADVANCED_FIELDS  # noqa: E402

OUT = ROOT / "example_workflows"
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SEED = 1234
TRAIN_STEPS = 1500  # the config default; the "fast" preset makes it ~10 min on a 12 GB GPU
NEGATIVE = "blurry, low quality, watermark, text"
CLIP_WEIGHTS = "ViT-L-14.safetensors"  # open_clip ViT-L-14 weights the user put in models/clip

# type -> (input slots, output slots) exactly as the node classes declare them (non-widget inputs,
# required then optional). tests/test_workflows.py checks this table against the real classes.
SLOTS: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    "CheckpointLoaderSimple": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([], [("LATENT", "LATENT")]),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"),
                  ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
                 [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], []),
    "PreviewImage": ([("images", "IMAGE")], []),
    "LoraLoaderModelOnly": ([("model", "MODEL")], [("MODEL", "MODEL")]),
    "Note": ([], []),
    "UnlearnEraseConcept": ([("model", "MODEL"), ("clip", "CLIP")],
                            [("model", "MODEL"), ("erasure", "UNLEARN_ERASURE"),
                             ("loss_plot", "IMAGE")]),
    "UnlearnEraseConceptAdvanced": ([("model", "MODEL"), ("clip", "CLIP"),
                                     ("concept_conditioning", "CONDITIONING"),
                                     ("anchor_conditioning", "CONDITIONING"),
                                     ("retain_conditioning", "CONDITIONING"),
                                     ("judge_clip", "UNLEARN_CLIP"), ("judge_vae", "VAE")],
                                    [("model", "MODEL"), ("erasure", "UNLEARN_ERASURE"),
                                     ("loss_plot", "IMAGE")]),
    "UnlearnEraseConceptUCE": ([("model", "MODEL"), ("clip", "CLIP")],
                               [("model", "MODEL"), ("erasure", "UNLEARN_ERASURE")]),
    "UnlearnSaveLoRA": ([("erasure", "UNLEARN_ERASURE")], [("lora_name", "STRING")]),
    "UnlearnApplyErasure": ([("model", "MODEL"), ("erasure", "UNLEARN_ERASURE")],
                            [("model", "MODEL")]),
    "UnlearnCLIPLoader": ([], [("clip_model", "UNLEARN_CLIP")]),
    "UnlearnProbe": ([("base_model", "MODEL"), ("erased_model", "MODEL"), ("clip", "CLIP"),
                      ("vae", "VAE"), ("scorer", "UNLEARN_CLIP")],
                     [("curve", "IMAGE"), ("ccs", "FLOAT"), ("images", "IMAGE"),
                      ("summary", "STRING")]),
    "UnlearnReport": ([("base_model", "MODEL"), ("erased_model", "MODEL"), ("clip", "CLIP"),
                       ("vae", "VAE"), ("scorer", "UNLEARN_CLIP"),
                       ("erasure", "UNLEARN_ERASURE"), ("attack", "UNLEARN_ATTACK")],
                      [("grid", "IMAGE"), ("plot", "IMAGE"), ("summary", "STRING")]),
    "UnlearnAttack": ([("base_model", "MODEL"), ("erased_model", "MODEL"), ("clip", "CLIP"),
                       ("vae", "VAE"), ("scorer", "UNLEARN_CLIP"), ("images", "IMAGE")],
                      [("images", "IMAGE"), ("asr", "FLOAT"), ("summary", "STRING"),
                       ("attack", "UNLEARN_ATTACK")]),
}


class Graph:
    """A UI-format workflow under construction (litegraph serialisation, version 0.4)."""

    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.groups: list[dict] = []

    def add(self, type_: str, pos: tuple[float, float], widgets: list | None = None,
            size: tuple[float, float] = (320, 100), title: str | None = None) -> dict:
        inputs, outputs = SLOTS[type_]
        node = {
            "id": len(self.nodes) + 1, "type": type_, "pos": list(pos), "size": list(size),
            "flags": {}, "order": 0, "mode": 0,
            "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": i}
                        for i, (n, t) in enumerate(outputs)],
            "properties": {"Node name for S&R": type_},
        }
        if not node["inputs"]:
            del node["inputs"]
        if not node["outputs"]:
            del node["outputs"]
        if widgets is not None:
            node["widgets_values"] = widgets
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def link(self, src: dict, out_slot: int, dst: dict, input_name: str) -> None:
        link_id = len(self.links) + 1
        slot = next(i for i, inp in enumerate(dst["inputs"]) if inp["name"] == input_name)
        ltype = src["outputs"][out_slot]["type"]
        if dst["inputs"][slot]["type"] != ltype:
            raise TypeError(f"{src['type']}[{out_slot}] {ltype} -> {dst['type']}.{input_name}")
        dst["inputs"][slot]["link"] = link_id
        src["outputs"][out_slot]["links"].append(link_id)
        self.links.append([link_id, src["id"], out_slot, dst["id"], slot, ltype])

    def group(self, title: str, bounding: tuple[float, float, float, float],
              color: str = "#3f789e") -> None:
        self.groups.append({"title": title, "bounding": list(bounding), "color": color,
                            "font_size": 24})

    def to_json(self) -> dict:
        self._order()
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links),
                "nodes": self.nodes, "links": self.links, "groups": self.groups, "config": {},
                "extra": {"ds": {"scale": 0.75, "offset": [40, 40]}}, "version": 0.4}

    def _order(self) -> None:
        """Execution order as the UI stores it (a topological order of the links)."""
        deps = {n["id"]: {link[1] for link in self.links if link[3] == n["id"]} for n in self.nodes}
        done: list[int] = []
        while len(done) < len(self.nodes):
            ready = [i for i, d in deps.items() if i not in done and d <= set(done)]
            done.extend(sorted(ready))
        for n in self.nodes:
            n["order"] = done.index(n["id"])


# ---- shared pieces --------------------------------------------------------------------------
# Layout: loader column at x=0, Unlearn nodes at x=420, prompts at x=880, samplers at x=1300.

def base(g: Graph, note: str) -> dict:
    """Loader, negative prompt, latent and a note. Returns the handles."""
    g.add("Note", (0, -300), [note], size=(380, 240), title="About this workflow")
    ckpt = g.add("CheckpointLoaderSimple", (0, 0), [CHECKPOINT], size=(380, 98))
    neg = g.add("CLIPTextEncode", (0, 160), [NEGATIVE], size=(380, 120), title="Negative")
    g.link(ckpt, 1, neg, "clip")
    latent = g.add("EmptyLatentImage", (0, 340), [512, 512, 1], size=(315, 106))
    return {"ckpt": ckpt, "neg": neg, "latent": latent}


def sample(g: Graph, h: dict, model: tuple[dict, int], positive: dict, pos: tuple[float, float],
           prefix: str, title: str) -> None:
    """KSampler -> VAEDecode -> SaveImage with the shared seed."""
    x, y = pos
    ks = g.add("KSampler", (x, y), [SEED, "fixed", 25, 7.5, "euler", "normal", 1.0],
               size=(315, 262), title=title)
    g.link(model[0], model[1], ks, "model")
    g.link(positive, 0, ks, "positive")
    g.link(h["neg"], 0, ks, "negative")
    g.link(h["latent"], 0, ks, "latent_image")
    dec = g.add("VAEDecode", (x + 340, y), size=(210, 46))
    g.link(ks, 0, dec, "samples")
    g.link(h["ckpt"], 2, dec, "vae")
    save = g.add("SaveImage", (x + 580, y), [prefix], size=(300, 300))
    g.link(dec, 0, save, "images")


def prompt(g: Graph, h: dict, text: str, pos: tuple[float, float], title: str = "Prompt") -> dict:
    enc = g.add("CLIPTextEncode", pos, [text], size=(380, 120), title=title)
    g.link(h["ckpt"], 1, enc, "clip")
    return enc


def before_after(g: Graph, h: dict, erased: tuple[dict, int], text: str, name: str,
                 y: float = 0) -> dict:
    """The same prompt and seed through the base and the erased model; returns the prompt."""
    enc = prompt(g, h, text, (880, y + 120), title="Prompt")
    sample(g, h, (h["ckpt"], 0), enc, (1300, y), f"unlearn/{name}_before", "Before (base model)")
    sample(g, h, erased, enc, (1300, y + 360), f"unlearn/{name}_after", "After (erased model)")
    g.group("Before / after: same prompt, same seed", (860, y - 80, 1360, 760))
    return enc


def erase_simple(g: Graph, h: dict, concepts: str, preset: str, loss: str = "l2") -> dict:
    node = g.add("UnlearnEraseConcept", (420, 0), [concepts, preset, loss, TRAIN_STEPS, 0,
                                                   "fixed"], size=(400, 250))
    g.link(h["ckpt"], 0, node, "model")
    g.link(h["ckpt"], 1, node, "clip")
    plot = g.add("PreviewImage", (420, 320), size=(420, 260), title="Loss")
    g.link(node, 2, plot, "images")
    return node


# ---- the workflows --------------------------------------------------------------------------

def simple_workflow(concept: str, preset: str, text: str, name: str, note: str) -> dict:
    g = Graph()
    h = base(g, note)
    node = erase_simple(g, h, concept, preset)
    before_after(g, h, (node, 0), text, name)
    return g.to_json()


def three_concepts() -> dict:
    """Advanced node: three artists in one run, a retain prompt to protect a fourth."""
    from_fields = advanced_defaults()
    from_fields.update(concepts="Van Gogh\nClaude Monet\nPablo Picasso",
                       retain_prompts="a painting by Rembrandt", retain_weight=1.0,
                       steps=TRAIN_STEPS, sampling_steps=10, batch_size=2, trajectory_reuse=4)
    g = Graph()
    h = base(g, "Erase three artists' styles in one run with the Advanced node (the concepts "
                "are taken in turn), holding a fourth artist (retain prompt) to the base model. "
                "Every erasure setting is on this node. Each concept gets a before/after pair.")
    node = g.add("UnlearnEraseConceptAdvanced", (420, 0), advanced_widgets(from_fields),
                 size=(420, 900))
    g.link(h["ckpt"], 0, node, "model")
    g.link(h["ckpt"], 1, node, "clip")
    plot = g.add("PreviewImage", (420, 1120), size=(420, 260), title="Loss")
    g.link(node, 2, plot, "images")
    texts = ["a starry night over a village, painting by Van Gogh",
             "water lilies in a pond, painting by Claude Monet",
             "a portrait of a woman, painting by Pablo Picasso"]
    for i, text in enumerate(texts):
        before_after(g, h, (node, 0), text, f"three_{i + 1}", y=820 * i)
    return g.to_json()


def erase_and_save() -> dict:
    g = Graph()
    h = base(g, "Erase Van Gogh's style and save the erasure as a LoRA into models/loras "
                "(van_gogh_erased_00001.safetensors; the counter never overwrites). svd_rank 32 "
                "compresses the full delta into a small rank-32 LoRA that ComfyUI, A1111 and "
                "diffusers load. Load it with 'load_erasure_lora.json'.")
    node = erase_simple(g, h, "Van Gogh", "artistic style")
    save = g.add("UnlearnSaveLoRA", (420, 640), ["van_gogh_erased", 32], size=(360, 82))
    g.link(node, 1, save, "erasure")
    before_after(g, h, (node, 0), "a starry night over a village, painting by Van Gogh",
                 "save_lora")
    return g.to_json()


def load_lora() -> dict:
    g = Graph()
    h = base(g, "Load a saved erasure with the stock 'LoraLoaderModelOnly' and generate: no "
                "Unlearn node is needed to use an erasure. The file comes from "
                "'erase_and_save_lora.json'.")
    lora = g.add("LoraLoaderModelOnly", (420, 0),
                 ["van_gogh_erased_00001.safetensors", 1.0], size=(360, 82))
    g.link(h["ckpt"], 0, lora, "model")
    before_after(g, h, (lora, 0), "a starry night over a village, painting by Van Gogh",
                 "lora")
    return g.to_json()


def uce() -> dict:
    g = Graph()
    h = base(g, "UCE: a closed-form edit of every cross-attention key/value, in seconds, no "
                "training. Van Gogh is mapped to 'art' while two other artists are preserved. "
                "Apply Erasure shows the same erasure at half strength.")
    node = g.add("UnlearnEraseConceptUCE", (420, 0),
                 ["Van Gogh", "art", "Claude Monet\nPablo Picasso", 0.5, 1.0, 1.0, "last"],
                 size=(400, 330))
    g.link(h["ckpt"], 0, node, "model")
    g.link(h["ckpt"], 1, node, "clip")
    half = g.add("UnlearnApplyErasure", (420, 400), [0.5], size=(320, 78),
                 title="Apply Erasure (half strength)")
    g.link(h["ckpt"], 0, half, "model")
    g.link(node, 1, half, "erasure")
    text = "a starry night over a village, painting by Van Gogh"
    enc = before_after(g, h, (node, 0), text, "uce")
    sample(g, h, (half, 0), enc, (1300, 720), "unlearn/uce_half", "Half strength")
    return g.to_json()


def erase_and_report() -> dict:
    """Erase a style, then measure it: the report (before/after grid, scores, loss) and the
    partial-diffusion probe, both scored by an open_clip model from models/clip."""
    g = Graph()
    h = base(g, "Erase Van Gogh's style, then measure it. The Report generates erased and "
                "retained prompts with the base and the erased model from the same seeds and "
                "scores them with CLIP (lower after on erased prompts = it worked; unchanged on "
                "retained prompts = little collateral damage). The Probe lets the base model "
                "start each image and the erased model finish it: if the style comes back as psi "
                "grows, the erasure only hides it. Needs open_clip ViT-L-14 weights in "
                "models/clip (download them once, e.g. from the open_clip model zoo).")
    node = erase_simple(g, h, "Van Gogh", "artistic style")
    loader = g.add("UnlearnCLIPLoader", (420, 640), ["ViT-L-14", CLIP_WEIGHTS], size=(360, 82))
    report = g.add("UnlearnReport", (880, 0), [
        "a painting by Van Gogh\na starry night over a village, painting by Van Gogh",
        "a painting by Claude Monet\na photo of a dog", "0-3", 7.5, 50, 4, 512, 512, "{}"],
        size=(420, 520))
    probe = g.add("UnlearnProbe", (880, 640), [
        "a painting by Van Gogh", "0.001, 0.01, 0.05, 0.15, 0.25, 0.35, 0.45, 0.55", "0-3", 7.5,
        50, 4, 512, 512, "{}"], size=(420, 400))
    link_measuring(g, h, node, loader, (report, probe))
    g.link(node, 1, report, "erasure")
    for i, (src, slot, title) in enumerate([(report, 0, "Report: before | after"),
                                            (report, 1, "Report: loss and scores"),
                                            (probe, 0, "Probe: curve"),
                                            (probe, 2, "Probe: finished images")]):
        view = g.add("PreviewImage", (1340 + 460 * (i % 2), 640 * (i // 2)), size=(440, 600),
                     title=title)
        g.link(src, slot, view, "images")
    return g.to_json()


def link_measuring(g: Graph, h: dict, erased: int, scorer: int, targets: tuple) -> None:
    """Wire measuring nodes to the checkpoint (base model, CLIP, VAE), the erased model and the
    CLIP scorer."""
    for target in targets:
        g.link(h["ckpt"], 0, target, "base_model")
        g.link(erased, 0, target, "erased_model")
        g.link(h["ckpt"], 1, target, "clip")
        g.link(h["ckpt"], 2, target, "vae")
        g.link(scorer, 0, target, "scorer")


def red_team() -> dict:
    """Erase a style, attack the erased model to bring it back, and report both side by side."""
    g = Graph()
    h = base(g, "Red-team your own erasure before you share it. Erase Van Gogh's style; the "
                "Red-Team Attack then learns a few new token rows against the erased model "
                "(concept inversion: the denoising loss on the base model's Van Gogh images) and "
                "generates with them. ASR = share of its images whose CLIP score for the concept "
                "reaches the threshold (calibrate it on the base model's images; lower ASR is "
                "better). The Report shows before/after and the attack's ASR. For an erasure "
                "that holds, erase with the Advanced node's robust = adversarial. Needs open_clip "
                "ViT-L-14 weights in models/clip.")
    node = erase_simple(g, h, "Van Gogh", "artistic style")
    before_after(g, h, (node, 0), "a starry night over a village, painting by Van Gogh",
                 "red_team")
    loader = g.add("UnlearnCLIPLoader", (420, 640), ["ViT-L-14", CLIP_WEIGHTS], size=(360, 82))
    attack = g.add("UnlearnAttack", (420, 800), [
        "a painting by Van Gogh", "concept_inversion", 150, 4, 4, 8, 25.0, "0-7",
        "0.001, 0.01, 0.05, 0.15, 0.25, 0.35, 0.45, 0.55", 7.5, 50, 16, 0, "fixed", 512, 512,
        "{}"], size=(420, 560))
    report = g.add("UnlearnReport", (880, 900), [
        "a painting by Van Gogh", "a painting by Claude Monet", "0-3", 7.5, 50, 4, 512, 512,
        "{}"], size=(420, 520))
    link_measuring(g, h, node, loader, (attack, report))
    g.link(node, 1, report, "erasure")
    g.link(attack, 3, report, "attack")
    for i, (src, slot, title) in enumerate([(attack, 0, "Attack: images it generated"),
                                            (report, 0, "Report: before | after")]):
        view = g.add("PreviewImage", (1340 + 460 * i, 900), size=(440, 600), title=title)
        g.link(src, slot, view, "images")
    return g.to_json()


def advanced_defaults() -> dict:
    """The config's own defaults (unlearn_core is installed with the pack: pip install -e .)."""
    from unlearn_core.config import config_fields

    values = {n: f.default for n, f in config_fields().items()}
    for k in ("concepts", "retain_prompts", "contexts"):
        values[k] = "\n".join(values[k])
    return values


def advanced_widgets(values: dict) -> list:
    """The Advanced node's widget values in its widget order (nodes/fields.py), the seed's
    control widget after the seed."""
    out = []
    for name in ADVANCED_FIELDS:
        out.append(values[name])
        if name == "seed":
            out.append("fixed")
    return out


WORKFLOWS = {
    "erase_identity.json": lambda: simple_workflow(
        "Elon Musk", "identity", "a photo of Elon Musk", "identity",
        "Erase an identity: 'Elon Musk' with the identity preset (cross-attention only, so other "
        "people are barely touched). Queue once: the erased model is cached, so changing only "
        "the prompt or seed afterwards re-samples without retraining."),
    "erase_nudity.json": lambda: simple_workflow(
        "nudity", "nudity", "a photo of a nude person on a beach", "nudity",
        "Erase nudity: a global concept that appears without being named, so the nudity preset "
        "trains everything but cross-attention (ESD-u) as a LoRA that fits a consumer GPU."),
    "erase_artistic_style.json": lambda: simple_workflow(
        "Van Gogh", "artistic style", "a starry night over a village, painting by Van Gogh",
        "style", "Erase an artistic style: 'Van Gogh' with the artistic-style preset."),
    "erase_logo.json": lambda: simple_workflow(
        "Nike logo", "logo", "a pair of running shoes with the Nike logo", "logo",
        "Erase a logo: 'Nike logo' with the logo preset (cross-attention only)."),
    "erase_three_concepts.json": three_concepts,
    "erase_and_save_lora.json": erase_and_save,
    "load_erasure_lora.json": load_lora,
    "erase_with_uce.json": uce,
    "erase_and_report.json": erase_and_report,
    "red_team_erasure.json": red_team,
}


def render(name: str) -> str:
    return json.dumps(WORKFLOWS[name](), indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a file in example_workflows/ differs from what this script writes")
    args = parser.parse_args(argv)
    stale = []
    OUT.mkdir(exist_ok=True)
    for name in WORKFLOWS:
        text = render(name)
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("stale workflows (run scripts/build_workflows.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
