"""Erasure files: what ``load_erasure`` refuses, the atomic no-overwrite write (raced),
the umask, the ranks an SVD actually wrote, and kohya's ``ss_*`` metadata."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from unlearn_core.delta import Delta, applied, check_strength
from unlearn_core.errors import ConfigError, FileFormatError, ModelError, OutputExistsError
from unlearn_core.files import (
    compress_deltas,
    kohya_metadata,
    load_erasure,
    read_metadata,
    save_erasure,
    svd_metadata,
)
from unlearn_core.keys import kohya_name

torch.set_num_threads(1)

LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
KEY = kohya_name(LAYER)
SHAPES = {LAYER: (8, 4)}


def _lora_file(path, alpha=None, down=None, up=None):
    tensors = {f"{KEY}.lora_down.weight": torch.ones(2, 4) if down is None else down,
               f"{KEY}.lora_up.weight": torch.ones(8, 2) if up is None else up}
    if alpha is not None:
        tensors[f"{KEY}.alpha"] = alpha
    save_file(tensors, str(path))
    return path


# ---- load_erasure refuses what would reach a model wrong ---------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_load_refuses_non_finite_deltas(tmp_path, bad):
    diff = torch.zeros(8, 4)
    diff[3, 1] = bad
    path = tmp_path / "d.safetensors"
    save_file({f"{KEY}.diff": diff}, str(path))
    with pytest.raises(FileFormatError, match=f"{LAYER}: 1 values are NaN or infinite.*Fix:"):
        load_erasure(path, SHAPES)
    up = torch.ones(8, 2)
    up[0, 0] = bad
    with pytest.raises(FileFormatError, match="NaN or infinite"):
        load_erasure(_lora_file(tmp_path / "l.safetensors", up=up), SHAPES)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf")])
def test_load_refuses_a_non_finite_alpha(tmp_path, alpha):
    path = _lora_file(tmp_path / "l.safetensors", alpha=torch.tensor(alpha))
    with pytest.raises(FileFormatError, match=f"layer {LAYER} has alpha = (nan|inf).*finite.*Fix:"):
        load_erasure(path, SHAPES)


def test_load_refuses_a_non_scalar_alpha_with_the_pack_error(tmp_path):
    path = _lora_file(tmp_path / "l.safetensors", alpha=torch.tensor([2.0, 3.0]))
    with pytest.raises(FileFormatError, match=r"alpha of shape \(2,\); a LoRA alpha is one number"):
        load_erasure(path, SHAPES)
    ok = _lora_file(tmp_path / "ok.safetensors", alpha=torch.tensor([4.0]))  # (1,) is one number
    assert load_erasure(ok, SHAPES).deltas[LAYER].alpha == 4.0


def test_load_refuses_a_file_without_tensors_and_names_a_directory(tmp_path):
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty))
    with pytest.raises(FileFormatError, match="holds no tensors.*Fix:"):
        load_erasure(empty, SHAPES)
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    with pytest.raises(FileFormatError, match="is a directory, not a file.*Fix:"):
        load_erasure(folder, SHAPES)
    with pytest.raises(FileFormatError, match="does not exist"):
        load_erasure(tmp_path / "missing.safetensors", SHAPES)


def test_load_refuses_a_lora_of_rank_zero(tmp_path):
    path = _lora_file(tmp_path / "l.safetensors", down=torch.ones(0, 4), up=torch.ones(8, 0))
    with pytest.raises(FileFormatError, match="do not fit this model"):
        load_erasure(path, SHAPES)


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), "1", None, True])
def test_strength_must_be_a_finite_number(strength):
    with pytest.raises(ConfigError, match="strength = .*Fix: give a number"):
        check_strength(strength)
    with pytest.raises(ConfigError):
        with applied(torch.nn.Linear(4, 8), {"": Delta(diff=torch.zeros(8, 4))}, strength):
            pass


def test_applied_names_missing_layers_with_the_pack_error():
    with pytest.raises(ModelError, match="not in the model.*Fix:"):
        with applied(torch.nn.Linear(4, 8), {"nope": Delta(diff=torch.zeros(8, 4))}):
            pass


# ---- writing: atomic, never over a file that appeared meanwhile, umask respected ---------------

def test_a_name_taken_while_writing_is_not_overwritten(tmp_path, monkeypatch):
    """Another process creates the output after our existence check, while the tensors are
    being written: the write fails with OutputExistsError, their file is untouched, nothing of
    ours is left in the folder."""
    import unlearn_core.files as files

    path = tmp_path / "e.safetensors"
    real_save = files.save_file

    def save_then_someone_else_takes_the_name(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        path.write_bytes(b"theirs")

    monkeypatch.setattr(files, "save_file", save_then_someone_else_takes_the_name)
    with pytest.raises(OutputExistsError, match="created while this one was being written"):
        save_erasure(path, {LAYER: Delta(diff=torch.ones(8, 4))}, {})
    assert path.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["e.safetensors"]


def test_without_hard_links_the_name_is_claimed_exclusively(tmp_path, monkeypatch):
    """On a file system without hard links the write falls back to an O_EXCL claim: still never
    over a file that appeared meanwhile."""
    import unlearn_core.files as files

    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(files.os, "link", no_links)
    path = tmp_path / "e.safetensors"
    save_erasure(path, {LAYER: Delta(diff=torch.ones(8, 4))}, {})
    assert torch.equal(load_erasure(path, SHAPES).deltas[LAYER].diff, torch.ones(8, 4))
    real_save = files.save_file

    def save_then_taken(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        (tmp_path / "f.safetensors").write_bytes(b"theirs")

    monkeypatch.setattr(files, "save_file", save_then_taken)
    with pytest.raises(OutputExistsError):
        save_erasure(tmp_path / "f.safetensors", {LAYER: Delta(diff=torch.ones(8, 4))}, {})
    assert (tmp_path / "f.safetensors").read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.safetensors", "f.safetensors"]


def test_racing_writers_one_wins_and_the_rest_are_refused(tmp_path):
    """Eight threads write different erasures to one name at the same moment, 20 times over:
    each time exactly one succeeds, the file holds that writer's tensors whole, the others get
    OutputExistsError, and no temporary file is left."""
    def write(i: int, path, barrier: threading.Barrier, outcome: dict) -> None:
        delta = {LAYER: Delta(diff=torch.full((8, 4), float(i)))}
        barrier.wait()
        try:
            save_erasure(path, delta, {"writer": i})
            outcome[i] = "wrote"
        except OutputExistsError:
            outcome[i] = "refused"

    for rnd in range(20):
        path = tmp_path / f"race{rnd}.safetensors"
        barrier = threading.Barrier(8)
        outcome: dict[int, str] = {}
        threads = [threading.Thread(target=write, args=(i, path, barrier, outcome))
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        [winner] = [i for i, o in outcome.items() if o == "wrote"]
        assert sorted(outcome.values()).count("refused") == 7
        loaded = load_erasure(path, SHAPES)
        assert torch.equal(loaded.deltas[LAYER].diff, torch.full((8, 4), float(winner)))
        assert loaded.metadata["writer"] == winner
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_saved_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = save_erasure(tmp_path / "e.safetensors", {LAYER: Delta(diff=torch.ones(8, 4))}, {})
        again = save_erasure(path, {LAYER: Delta(diff=torch.ones(8, 4))}, {}, overwrite=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE(again.stat().st_mode) == mode


def test_an_unwritable_folder_gives_the_pack_error_and_leaves_nothing(tmp_path, monkeypatch):
    import unlearn_core.errors as errors
    import unlearn_core.files as files

    def disk_full(tensors, filename, metadata=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "save_file", disk_full)
    with pytest.raises(errors.UnlearnError, match="could not write the file.*free space"):
        save_erasure(tmp_path / "e.safetensors", {LAYER: Delta(diff=torch.ones(8, 4))}, {})
    assert list(tmp_path.iterdir()) == []


# ---- SVD: the ranks written are the ranks recorded ---------------------------------------------

def test_svd_rank_larger_than_a_layer_records_the_rank_written(tmp_path):
    g = torch.Generator().manual_seed(0)
    deltas = {"small": Delta(diff=torch.randn(6, 4, generator=g)),
              "large": Delta(diff=torch.randn(32, 16, generator=g))}
    out, errors = compress_deltas(deltas, 8)
    assert {n: d.rank for n, d in out.items()} == {"small": 4, "large": 8}
    meta, note = svd_metadata(8, out, errors)
    assert meta["svd_rank"] == 8 and meta["svd_rank_requested"] == 8
    assert meta["svd_layer_ranks"] == {"small": 4}
    assert "svd_rank 8 is more than 1 of 2 layers have" in note and "full rank (4)" in note
    all_small, errors = compress_deltas({"small": deltas["small"]}, 100)
    meta, note = svd_metadata(100, all_small, errors)
    assert meta["svd_rank"] == 4 and meta["svd_rank_requested"] == 100 and note
    fits, errors = compress_deltas(deltas, 2)
    meta, note = svd_metadata(2, fits, errors)
    assert meta["svd_rank"] == 2 and "svd_rank_requested" not in meta and note is None


# ---- kohya metadata ------------------------------------------------------------------------

def _header(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_lora_file_carries_kohyas_training_fields_and_ours(tmp_path):
    from unlearn_core.config import EraseConfig

    config = EraseConfig(concepts=("Van Gogh", "Monet"), steps=300, lr=1e-4, seed=7,
                         parametrization="lora", lora_rank=4, lora_alpha=2.0)
    deltas = {LAYER: Delta(down=torch.ones(4, 4), up=torch.ones(8, 4), alpha=2.0)}
    meta = {"config": config.to_dict(), "base_weights_sha256": "ab" * 32, "unlearn_version": "x"}
    header = _header(save_erasure(tmp_path / "e.safetensors", deltas, meta))
    assert header["ss_network_module"] == "networks.lora"
    assert header["ss_network_dim"] == "4" and header["ss_network_alpha"] == "2.0"
    assert header["ss_base_model_version"] == "sd_v1" and header["ss_v2"] == "False"
    assert header["ss_max_train_steps"] == "300" and header["ss_learning_rate"] == "0.0001"
    assert header["ss_unet_lr"] == "0.0001" and header["ss_seed"] == "7"
    assert header["ss_batch_size_per_device"] == "2" and header["ss_resolution"] == "(512, 512)"
    assert header["ss_optimizer"].startswith("torch.optim.adamw.AdamW(weight_decay=0.0001")
    assert "Van Gogh, Monet" in header["ss_training_comment"]
    assert all(isinstance(v, str) for v in header.values())
    # ours are kept
    assert header["format"] == "unlearn.erasure" and json.loads(header["config"]) == config.to_dict()
    assert header["base_weights_sha256"] == "ab" * 32
    assert read_metadata(tmp_path / "e.safetensors")["ss_network_dim"] == 4


def test_kohya_dim_is_dynamic_where_ranks_differ_and_absent_for_diff_files():
    mixed = {"a": Delta(down=torch.ones(4, 4), up=torch.ones(8, 4), alpha=4.0),
             "b": Delta(down=torch.ones(2, 4), up=torch.ones(8, 2), alpha=2.0),
             "c": Delta(down=torch.ones(3, 4, 3, 3), up=torch.ones(8, 3, 1, 1), alpha=3.0)}
    meta = kohya_metadata(mixed, {})
    assert meta["ss_network_dim"] == meta["ss_network_alpha"] == "Dynamic"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "3", "conv_alpha": "3.0"}
    diff = kohya_metadata({"a": Delta(diff=torch.ones(8, 4))}, {"config": {"method": "uce",
                                                                          "concepts": ["x"]}})
    assert "ss_network_dim" not in diff and "ss_network_alpha" not in diff
    assert diff["ss_network_module"] == "networks.lora" and diff["ss_base_model_version"] == "sd_v1"
    assert "ss_max_train_steps" not in diff and "UCE" in diff["ss_training_comment"]


def test_same_erasure_same_file_contents(tmp_path):
    """Nothing time- or machine-dependent goes into the header: the same erasure saved twice
    gives the same tensors and the same metadata."""
    deltas = {LAYER: Delta(down=torch.ones(4, 4), up=torch.ones(8, 4), alpha=2.0)}
    meta = {"config": {"concepts": ["x"], "steps": 2, "lr": 1e-5, "seed": 0}}
    a = save_erasure(tmp_path / "a.safetensors", deltas, meta)
    b = save_erasure(tmp_path / "b.safetensors", deltas, meta)
    assert _header(a) == _header(b)
    from safetensors.torch import load_file

    sa, sb = load_file(str(a)), load_file(str(b))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
