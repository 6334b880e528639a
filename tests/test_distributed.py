"""Data-parallel erasure on the toy world, 2 gloo processes on the CPU, and resumable runs: the
result depends on the seed and the global batch (trajectories_per_step x batch_size), not on the
number of processes; with trajectories_per_step a multiple of the processes each samples only its
own trajectories; a run stopped after a checkpoint and resumed ends where an uninterrupted one
does; a dead process ends the run with a message and no file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unlearn_core import Cancelled
from unlearn_core.cli import main
from unlearn_core.distributed import Parallel, Share, keyed_generator
from unlearn_core.errors import ConfigError
from unlearn_core.files import read_metadata
from unlearn_core.resume import CheckpointPlan
from unlearn_core.toyworld import load_toy_model
from unlearn_core.toyworld.erasure import erase_toy, toy_config

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
TOY = ["erase", "--model", "toy", "--concept", "cross", "--concept", "red", "--seed", "5"]
LR = 3e-4  # the toy world's


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", UNLEARN_DIST_TIMEOUT="60", **extra)
    return env


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_keyed_draws_do_not_depend_on_what_was_drawn_before():
    a = torch.rand(3, generator=keyed_generator(0, "timestep", 7, 1))
    torch.rand(100, generator=keyed_generator(0, "timestep", 7, 0))
    assert torch.equal(a, torch.rand(3, generator=keyed_generator(0, "timestep", 7, 1)))
    assert not torch.equal(a, torch.rand(3, generator=keyed_generator(0, "timestep", 7, 2)))
    assert not torch.equal(a, torch.rand(3, generator=keyed_generator(1, "timestep", 7, 1)))


def test_slots_split_the_batch_and_an_uneven_split_is_refused():
    assert [Parallel(2, r).slots(4) for r in (0, 1)] == [range(0, 2), range(2, 4)]
    with pytest.raises(ConfigError, match="batch_size = 3: does not split evenly over 2"):
        Parallel(2, 1).slots(3)
    with pytest.raises(ConfigError, match="set trajectories_per_step to a multiple of the number"):
        Parallel(2, 1).share(3, 3)


def test_whole_trajectories_go_to_the_processes_when_they_split_evenly():
    assert [Parallel(2, r).share(4, 3) for r in (0, 1)] == [
        Share(range(0, 2), range(3)), Share(range(2, 4), range(3))]
    assert Parallel().share(3, 2) == Share(range(3), range(2))
    # not a multiple of the processes: every process takes a share of every trajectory's states
    assert Parallel(2, 1).share(1, 4) == Share(range(1), range(2, 4), by_slots=True)
    assert Parallel(2, 0).share(3, 2) == Share(range(3), range(0, 1), by_slots=True)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")
def test_two_processes_give_the_one_process_result(tmp_path):
    """torchrun, 2 gloo processes of 2 slots each, against 1 process of the same global batch
    (4). They differ only by float32 reduction order: the student's and targets' passes run at
    batch 2 instead of 4, and the gradients are summed across processes (measured: max abs
    difference 4.0e-8 after 8 steps, where AdamW moves an element at most ~lr = 3e-4 a step).
    The bound, 1e-3 x lr x steps, is 60x the measured difference, 1000x below what the student
    may move, and 1/40 of what the returned EMA teacher did move: a wrong slot, key or averaging
    changes the result by whole steps."""
    steps = 8
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    flags = [*TOY, "--steps", str(steps), "--batch-size", "4"]
    subprocess.run([sys.executable, "-m", "unlearn_core", *flags, "--output", str(one)],
                   check=True, env=_env(), cwd=ROOT, capture_output=True, timeout=120)
    run = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m",
                          "unlearn_core", *flags, "--output", str(two)],
                         env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("done:") == 1  # rank 0 alone reports (and writes)
    a, b = _tensors(one), _tensors(two)
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float(v.abs().max()) for k, v in a.items() if k.endswith(".diff"))
    print(f"max abs difference 1 vs 2 processes: {diff:.3g} (largest |delta| {moved:.3g})")
    assert moved > 20 * 1e-3 * LR * steps  # the run did move the weights
    assert diff <= 1e-3 * LR * steps
    assert not list(tmp_path.glob("*.ckpt"))


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")
def test_two_processes_sample_only_their_own_trajectories(tmp_path):
    """trajectories_per_step 2 on 2 processes: each process samples and trains its own group (its
    own trajectory and concept), against 1 process of the same 2 groups of 2 states. The sampling
    is not replicated: each process spends half the single process's sampling evaluations (every
    trajectory here serves 4 steps and is run in full, so the halves are exact). The results
    differ by float32 reduction order only (the loss is summed over the processes, not over the
    groups in one process; measured max abs difference 4.9e-8 after 8 steps); the bound is the
    one of the test above. A checkpoint is written on the way (every process's trajectories
    gathered to the first)."""
    steps = 8
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    flags = [*TOY, "--steps", str(steps), "--batch-size", "2", "--trajectories-per-step", "2"]
    subprocess.run([sys.executable, "-m", "unlearn_core", *flags, "--output", str(one)],
                   check=True, env=_env(), cwd=ROOT, capture_output=True, timeout=120)
    run = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m",
                          "unlearn_core", *flags, "--checkpoint-every", "3", "--output", str(two)],
                         env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "note:" not in run.stderr  # the trajectories split evenly: no replicated sampling
    a, b = _tensors(one), _tensors(two)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float(v.abs().max()) for k, v in a.items() if k.endswith(".diff"))
    print(f"max abs difference 1 vs 2 processes, 2 trajectories a step: {diff:.3g} "
          f"(largest |delta| {moved:.3g})")
    assert moved > 20 * 1e-3 * LR * steps
    assert diff <= 1e-3 * LR * steps
    single, split = read_metadata(one), read_metadata(two)
    per_process = split["unet_evals_per_process"]
    assert single["unet_evals_sampling"] == 4 * (10 - 1) * 2  # 4 trajectories, 9 guided steps
    assert [p["sampling"] for p in per_process] == [single["unet_evals_sampling"] // 2] * 2
    for key in ("nograd", "grad", "sampling"):
        assert sum(p[key] for p in per_process) == single[f"unet_evals_{key}"]


def test_the_groups_of_a_step_train_their_own_concepts():
    """With 2 trajectories a step and 2 concepts, every step trains both concepts, each group from
    its own trajectory (its own z_T) and its own draws."""
    from unlearn_core.conditioning import encode_conditioning
    from unlearn_core.toyworld.erasure import last_token_fn, toy_denoiser
    from unlearn_core.trainer import choose_pair, prepare

    model = load_toy_model()
    config = toy_config(["cross", "red"], batch_size=2, trajectories_per_step=2,
                        trajectory_reuse=3, contexts=("{}",))
    cond = encode_conditioning(model.encode, config, last_token_fn(model))
    run, _ = prepare(toy_denoiser(model), cond, config)
    groups = [[choose_pair(run, n, g) for g in range(2)] for n in range(7)]
    assert [[g.concept for g in step] for step in groups] == [[0, 1]] * 7
    assert [[g.trajectory for g in step] for step in groups] == \
        [[0, 1]] * 3 + [[2, 3]] * 3 + [[4, 5]]
    assert len({g.draw for step in groups for g in step}) == 14


def test_a_resumed_run_with_two_trajectories_a_step_ends_where_an_uninterrupted_one_does(
        tmp_path):
    """trajectories_per_step 2: each group's held trajectory is in the checkpoint; stopped after
    step 5 (checkpoint at 4, mid-trajectory) and resumed, the run is bitwise the uninterrupted
    one."""
    model = load_toy_model()
    config = toy_config(["cross", "red"], steps=7, seed=2, trajectory_reuse=3, batch_size=2,
                        trajectories_per_step=2)
    whole = erase_toy(model, config)
    plan = CheckpointPlan(tmp_path / "e.safetensors.ckpt", every=4, resume=True)
    with pytest.raises(Cancelled):
        erase_toy(model, config, callback=lambda info: info.step == 5, checkpoint=plan)
    resumed = erase_toy(model, config, checkpoint=plan)
    assert resumed.loss_history == whole.loss_history
    for name, d in whole.deltas.items():
        assert torch.equal(d.weight(), resumed.deltas[name].weight())
    for key in ("unet_evals_nograd", "unet_evals_grad", "unet_evals_sampling"):
        assert resumed.metadata[key] == whole.metadata[key]


_STOP_AT_5 = """
import json, sys
from pathlib import Path
from unlearn_core import Cancelled
from unlearn_core.distributed import from_environment, shutdown
from unlearn_core.resume import CheckpointPlan
from unlearn_core.toyworld import load_toy_model
from unlearn_core.toyworld.erasure import erase_toy, toy_config
config = toy_config(["cross", "red"], **json.loads(sys.argv[2]))
plan = CheckpointPlan(Path(sys.argv[1]), every=4, resume=True)
try:
    erase_toy(load_toy_model(), config, callback=lambda info: info.step == 5,
              parallel=from_environment(), checkpoint=plan)
except Cancelled:
    pass
shutdown()
"""


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")
def test_a_run_checkpointed_on_two_processes_resumes_on_one(tmp_path):
    """2 processes, one trajectory each, stopped after step 5 with a checkpoint at step 4 (each
    process's held trajectory gathered into it); resumed by 1 process, which now samples both:
    the uninterrupted single process's result, within the float tolerance of the tests above."""
    settings = dict(steps=7, seed=2, trajectory_reuse=3, batch_size=2, trajectories_per_step=2)
    script = tmp_path / "stop.py"
    script.write_text(_STOP_AT_5)
    ckpt = tmp_path / "e.safetensors.ckpt"
    run = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script),
                          str(ckpt), json.dumps(settings)],
                         env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0 and ckpt.exists(), run.stderr[-2000:]
    model = load_toy_model()
    config = toy_config(["cross", "red"], **settings)
    whole = erase_toy(model, config)
    resumed = erase_toy(model, config, checkpoint=CheckpointPlan(ckpt, every=4, resume=True))
    diff = max(float((d.weight() - resumed.deltas[n].weight()).abs().max())
               for n, d in whole.deltas.items())
    print(f"max abs difference, resumed on 1 of 2 processes' checkpoint: {diff:.3g}")
    assert diff <= 1e-3 * LR * config.steps
    assert resumed.loss_history == pytest.approx(whole.loss_history, rel=1e-4)
    assert resumed.metadata["unet_evals_sampling"] == whole.metadata["unet_evals_sampling"]


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    """Stopped after step 5, with a checkpoint at step 4 (mid-trajectory: one trajectory serves
    steps 3-5), resumed: bitwise the uninterrupted run, loss history and UNet counts included;
    a resume with another setting is refused, naming it."""
    model = load_toy_model()
    config = toy_config(["cross", "red"], steps=7, seed=2, trajectory_reuse=3)
    whole = erase_toy(model, config)
    ckpt = tmp_path / "e.safetensors.ckpt"
    plan = CheckpointPlan(ckpt, every=4, resume=True)
    with pytest.raises(Cancelled):
        erase_toy(model, config, callback=lambda info: info.step == 5, checkpoint=plan)
    assert ckpt.exists()
    resumed = erase_toy(model, config, checkpoint=plan)
    assert resumed.loss_history == whole.loss_history
    for name, d in whole.deltas.items():
        assert torch.equal(d.weight(), resumed.deltas[name].weight())
    for key in ("unet_evals_nograd", "unet_evals_grad"):
        assert resumed.metadata[key] == whole.metadata[key]
    other = config.lr * 2
    with pytest.raises(ConfigError, match=rf"other settings \(lr: {config.lr} then, {other} now\)"):
        erase_toy(model, config.replace(lr=other), checkpoint=plan)


def test_the_command_refuses_a_stale_checkpoint_and_removes_its_own(tmp_path, capsys):
    out = tmp_path / "e.safetensors"
    ckpt = tmp_path / "e.safetensors.ckpt"
    ckpt.write_bytes(b"not a checkpoint")
    code = main([*TOY, "--steps", "2", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "a checkpoint of an earlier run" in err and "--resume" in err
    code = main([*TOY, "--steps", "2", "--output", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be read as a training checkpoint" in err and not out.exists()
    ckpt.unlink()
    assert main([*TOY, "--steps", "3", "--output", str(out), "--checkpoint-every", "1"]) == 0
    assert out.exists() and not ckpt.exists()


def test_a_killed_process_ends_the_run_with_a_message_and_no_file(tmp_path):
    """Two processes started as torchrun would (env rendezvous); the second is killed once
    training runs: the first ends within seconds, one line on stderr, exit 2, no file."""
    out = tmp_path / "e.safetensors"
    ckpt = tmp_path / "e.safetensors.ckpt"
    port = str(29500 + os.getpid() % 2000)
    flags = [*TOY, "--steps", "2000", "--output", str(out), "--checkpoint-every", "1"]
    procs = [subprocess.Popen([sys.executable, "-m", "unlearn_core", *flags], cwd=ROOT,
                              env=_env(WORLD_SIZE="2", RANK=str(r), LOCAL_RANK=str(r),
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    try:
        deadline = time.monotonic() + 90
        while not ckpt.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ckpt.exists(), "training did not start"
        procs[1].send_signal(signal.SIGKILL)
        _, err = procs[0].communicate(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    last = [line for line in err.splitlines() if line.strip() and "step/s" not in line][-1]
    assert procs[0].returncode == 2, err[-2000:]
    assert last.startswith("unlearn erase: error: another process of this data-parallel run "
                           "failed or stopped"), err[-2000:]
    assert "nothing was written" in last and "--resume" in last
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_distributed_module_stays_out_of_a_plain_run(tmp_path):
    """One process (no WORLD_SIZE): no process group is started."""
    import torch.distributed as dist

    assert main([*TOY, "--steps", "1", "--output", str(tmp_path / "e.safetensors")]) == 0
    assert not dist.is_initialized()
