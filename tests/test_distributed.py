"""More than one process: DDP on CPU with gloo (twinflow_min/distributed.py, issue 15).

Two processes (tests/ddp_worker.py, from a fork server) train the toy and a tiny class-conditional
DiT with flow matching and both TwinFlow recipes, and the DiT with LoRA adapters. The
single-process reference of the equivalence test runs the same public loss (twinflow_losses /
flow_matching_loss) on every rank's rows at once. train.py itself runs under torchrun's environment
for resume, NaN and world-size checks, and for a LoRA run (model_type lora) and its resume.
"""

import json
import multiprocessing

import numpy as np
import pytest
import torch
import torch.distributed as dist

import ddp_worker
from twinflow_min.checkpoint import load_pretrained
from twinflow_min.data_sources import SetupError
from twinflow_min.distributed import (
    DistributedRun,
    LossModule,
    PeerFailed,
    check_world_size,
    gather_rank_states,
    micro_step_sync,
    rank_rng_states,
    rank_seed,
    start_distributed,
    wrap_loss,
)
from twinflow_min.lora import load_adapter, trainable_names
from twinflow_min.model import build_model
from twinflow_min.train_state import read_checkpoint

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()
         and "forkserver" in multiprocessing.get_all_start_methods()),
    reason="needs torch.distributed with gloo and the forkserver start method (Linux, macOS)")

ENV = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
       "MASTER_PORT": "29500"}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What rank 0 and rank 1 of one 2-process run of ddp_worker.main saw."""
    out = tmp_path_factory.mktemp("ddp")
    ddp_worker.spawn(ddp_worker.main, 2, str(out))
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


# ------------------------------------------------------------------------ without a process group

def test_rank_seed_keeps_rank_0_and_spreads_the_others():
    assert rank_seed(7, 0) == 7
    assert rank_seed(2**63 - 1, 0) == 2**63 - 1
    # by hand: 0x9E3779B97F4A7C15 = 11400714819323198485; minus 2^63 = 2177342782468422677; + 7
    assert rank_seed(7, 1) == 2177342782468422684
    assert rank_seed(7, 1) != rank_seed(8, 0)
    seeds = {rank_seed(0, rank) for rank in range(1024)}
    assert len(seeds) == 1024
    assert all(0 <= seed < 2**63 for seed in seeds)


def test_plain_run_is_a_pass_through():
    run = start_distributed("cpu", environ={})
    assert (run.enabled, run.rank, run.world_size, run.is_main) == (False, 0, 1, True)
    student = build_model("toy")
    module = wrap_loss(student, lambda model, teacher, x, y, *, step, micro_step: {"m": model},
                       run)
    assert type(module) is LossModule
    assert module(None, None, None, 0, 0)["m"] is student
    with micro_step_sync(module, 0, 4):
        pass
    with pytest.raises(ValueError, match="not swallowed"):
        with run.guarded():
            raise ValueError("not swallowed")
    assert run.any(True) and not run.any(False)
    assert run.gather({"a": 1}) == [{"a": 1}]
    state = torch.Generator().manual_seed(3).get_state()
    tensors, data_states = gather_rank_states(run, {"rng.train": state}, {"epoch": 2})
    assert list(tensors) == ["rng.train"] and torch.equal(tensors["rng.train"], state)
    assert data_states == [{"epoch": 2}]


@pytest.mark.parametrize("environ, device, match", [
    ({"WORLD_SIZE": "2"}, "cpu", "RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT is not"),
    ({**ENV, "RANK": "2"}, "cpu", "RANK=2 is not below WORLD_SIZE=2"),
    ({**ENV, "RANK": "one"}, "cpu", "RANK='one' in the environment is not"),
    ({**ENV, "WORLD_SIZE": "0", "RANK": "0"}, "cpu", "WORLD_SIZE=0"),
    (ENV, "cuda:1", "each process takes the GPU of its LOCAL_RANK"),
    (ENV, "mps", "use --device cuda"),
    ({}, "gpu", "not a device name"),
])
def test_bad_launch_is_one_line(environ, device, match):
    with pytest.raises(SetupError, match=match) as caught:
        start_distributed(device, environ=environ)
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_cuda_under_torchrun_without_a_gpu_is_refused():
    with pytest.raises(SetupError, match="no CUDA GPU; use --device cpu"):
        start_distributed("cuda", environ=ENV)


def test_resume_with_another_world_size_is_refused():
    two = DistributedRun(rank=0, world_size=2, enabled=True)
    check_world_size(2, two, "run/checkpoint.safetensors")
    with pytest.raises(SetupError, match=r"trained with 4 process\(es\), this is 2; .*"
                                         r"torchrun --nproc_per_node 4 train.py --resume"):
        check_world_size(4, two, "run/checkpoint.safetensors")
    with pytest.raises(SetupError, match="with 1 process.*: python train.py --resume"):
        check_world_size(1, two, "run/checkpoint.safetensors")


# ------------------------------------------------------------------------ two processes (gloo)

CASES = [f"{kind}/{recipe}" for kind in ("toy", "dit") for recipe in ("fm", "tutorial", "large")]


@needs_gloo
@pytest.mark.parametrize("case", CASES + ["toy/tutorial/accumulate"])
def test_one_ddp_step_equals_one_step_on_the_whole_batch(ranks, case):
    """Gradients of DDP on two halves == one process on the whole batch, same per-row draws.

    The loss is a mean over rows (the large recipe: a sum over the micro-batch / B) and DDP averages
    the ranks' gradients, so the two are equal up to float32 rounding of sums taken in another
    order (8 rows vs 16; observed <= 5e-7 at gradients up to 3). With accumulation, the 2
    micro-steps per rank run under no_sync / sync and the reference sums 2 micro-steps of 16 rows.
    """
    rank0, rank1 = ranks[0][f"equal/{case}"], ranks[1][f"equal/{case}"]
    assert rank0["ddp"].keys() == rank0["reference"].keys()
    for name, grad in rank0["ddp"].items():
        assert torch.equal(grad, rank1["ddp"][name]), name  # one all-reduce: the same bits
        torch.testing.assert_close(grad, rank0["reference"][name], rtol=1e-5, atol=2e-6,
                                   msg=lambda text, name=name: f"{case} {name}: {text}")
    recipe = case.split("/")[1]
    if recipe != "fm":  # every TwinFlow term is in the step
        assert {"loss_base", "loss_adv", "loss_rectify"} <= set(rank0["loss_names"])


@needs_gloo
@pytest.mark.parametrize("case", CASES + ["dit/tutorial/checkpointing"])
def test_ranks_end_with_identical_weights_and_teacher(ranks, case):
    """A few AdamW steps on each rank's own data: student and EMA teacher equal bit for bit.

    Also the proof for find_unused_parameters=False: every case trains >= 2 steps (an unused or
    twice-marked parameter would raise at the second forward), including gradient checkpointing.
    """
    rank0, rank1 = ranks[0][f"train/{case}"], ranks[1][f"train/{case}"]
    assert not torch.equal(rank0["first_x"], rank1["first_x"])  # each rank draws its own data
    for part in ("student", "teacher"):
        for name, value in rank0[part].items():
            assert torch.equal(value, rank1[part][name]), f"{part} {name}"


@needs_gloo
@pytest.mark.parametrize("case", CASES)
def test_gradients_are_all_reduced_once_per_optimizer_step(ranks, case):
    """2 micro-steps per step: no bucket all-reduced in the first (no_sync), some in the last."""
    reduces = ranks[0][f"train/{case}"]["reduces"]
    assert len(reduces) == 6
    assert reduces[0::2] == [0, 0, 0]
    assert all(count >= 1 for count in reduces[1::2])


@needs_gloo
def test_an_unused_parameter_is_caught(ranks):
    """Negative control of the test above: a parameter outside the graph stops DDP at step 2."""
    for rank in ranks:
        assert "Expected to have finished reduction" in rank["unused"]


@needs_gloo
def test_a_failing_rank_stops_every_rank_with_its_message(ranks):
    assert ranks[1]["failure"] == {"kind": "ValueError",
                                   "message": "bad batch on purpose\nsecond line"}
    assert ranks[0]["failure"] == {"kind": "PeerFailed", "rank": 1, "error_kind": "ValueError",
                                   "message": "bad batch on purpose"}
    assert str(PeerFailed(1, "ValueError", "bad batch")) == "rank 1: bad batch"
    assert ranks[0]["any"] == ranks[1]["any"] == [True, False]


@needs_gloo
def test_checkpoint_states_hold_every_rank(ranks):
    """Rank 0 keeps the single-process keys; rank 1's states come back under its own rank."""
    saved = ranks[0]["rank_states"]["tensors"]
    assert sorted(saved) == ["rng.rank1.train", "rng.train"]
    for rank in (0, 1):
        mine = ranks[rank]["rank_states"]["mine"]
        assert torch.equal(rank_rng_states(saved, rank)["rng.train"], mine)
        assert torch.equal(mine, torch.Generator().manual_seed(rank_seed(7, rank)).get_state())
    assert ranks[0]["rank_states"]["data_states"] == [{"rank": 0}, {"rank": 1}]
    assert rank_rng_states(saved, 2) == {}


# ------------------------------------------------------------------------ train.py, two processes

def toy_args(out, steps: int) -> list[str]:
    """A short TwinFlow toy run (adversarial branch, EMA teacher), 2 micro-steps per step; the
    cosine learning rate decays over 4 steps however many this part trains."""
    return ["--toy", "moons", "--device", "cpu", "--batch-size", "16", "--steps", str(steps),
            "--gradient_accumulation_steps", "2", "--out", str(out), "--validation_every", "0",
            "--checkpointing_steps", "0", "--eval_samples", "0", "--log_every", "1",
            "--lr_decay_steps", "4"]


def train_ranks(tmp_path, name: str, argv: list[str], world_size: int = 2,
                nan_from_batch: int | None = None, keep_state: bool = False) -> list:
    """Exit code, summary, stdout and stderr of every rank of one `train.py` run under torchrun's
    environment (options: ddp_worker.train_rank's)."""
    out = tmp_path / f"ranks-{name}"
    out.mkdir()
    ddp_worker.spawn(ddp_worker.train_rank, world_size, str(out), argv, nan_from_batch,
                     keep_state)
    return [{**json.loads((out / f"rank{rank}.json").read_text()),
             "out": (out / f"rank{rank}.out").read_text(),
             "err": (out / f"rank{rank}.err").read_text()} for rank in range(world_size)]


def metrics_rows(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in row.items() if key != "steps_per_s"} for row in rows]


@needs_gloo
def test_two_process_resume_continues_bit_for_bit(tmp_path, capfd):
    whole = train_ranks(tmp_path, "whole", toy_args(tmp_path / "whole", 4))
    first = train_ranks(tmp_path, "first", toy_args(tmp_path / "part", 2))
    run_dir = tmp_path / "part" / "toy-moons"
    rest = train_ranks(tmp_path, "rest", ["--resume", str(run_dir), "--max_train_steps", "4"])
    assert [rank["code"] for rank in whole + first + rest] == [0] * 6
    a = read_checkpoint(tmp_path / "whole" / "toy-moons")
    b = read_checkpoint(run_dir)
    assert a["info"]["step"] == b["info"]["step"] == 4
    assert a["info"]["extra"]["world_size"] == 2
    assert sorted(a["rng"]) == ["rng.global_cpu", "rng.rank1.global_cpu", "rng.rank1.toy_data",
                                "rng.rank1.train", "rng.toy_data", "rng.train"]
    assert not torch.equal(a["rng"]["rng.train"], a["rng"]["rng.rank1.train"])
    for part in ("model", "rng"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), key
    for key, value in a["ema"]["teacher"].items():
        assert torch.equal(value, b["ema"]["teacher"][key]), key
    assert metrics_rows(tmp_path / "whole" / "toy-moons") == metrics_rows(run_dir)
    assert whole[1]["summary"]["rank"] == 1  # rank 1 returns without evaluating
    printed = [rank["out"] for rank in whole + first + rest]  # rank 0 alone prints
    line = "global batch: 16 per process x 2 process(es) x 2 accumulation step(s) = 64 samples"
    assert [line in text for text in printed] == [True, False] * 3

    # the same run with another number of processes is refused in one line, nothing trained
    with pytest.raises(SystemExit) as stop:
        import train
        train.main(["--resume", str(run_dir), "--max_train_steps", "6"])
    assert stop.value.code == 2
    error = capfd.readouterr().err
    assert "trained with 2 process(es), this is 1; resume with the same number: torchrun " \
           "--nproc_per_node 2 train.py --resume" in error
    assert read_checkpoint(run_dir)["info"]["step"] == 4


@needs_gloo
def test_a_nan_on_one_rank_stops_both_with_the_message_once(tmp_path):
    ranks = train_ranks(tmp_path, "nan", toy_args(tmp_path / "nan", 4), nan_from_batch=2)
    assert [rank["code"] for rank in ranks] == [3, 3]
    error = ranks[0]["err"] + ranks[1]["err"]
    lines = [line for line in error.splitlines() if "non-finite" in line]
    assert len(lines) == 1, error
    assert ranks[1]["err"] == ""  # rank 0 prints what stopped every rank
    # rank 1's third micro-batch is the first of step 2 (2 micro-steps per step)
    assert lines[0].startswith("train.py: error: rank 1: non-finite loss at step 2 (loss_base=nan")
    assert "loss=nan); no checkpoint was written before it" in lines[0]
    assert not (tmp_path / "nan" / "toy-moons" / "checkpoint.safetensors").exists()


@needs_gloo
def test_one_process_under_torchrun_equals_a_plain_run(tmp_path):
    """World size 1 with DDP: rank 0 seeds = the plain run's, and DDP changes no number."""
    ranks = train_ranks(tmp_path, "one", toy_args(tmp_path / "ddp", 3), world_size=1)
    assert ranks[0]["code"] == 0
    import train
    train.main(toy_args(tmp_path / "plain", 3))
    a = read_checkpoint(tmp_path / "ddp" / "toy-moons")
    b = read_checkpoint(tmp_path / "plain" / "toy-moons")
    assert "world_size" not in a["info"]["extra"]
    for part in ("model", "rng"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), key
    assert metrics_rows(tmp_path / "ddp" / "toy-moons") == metrics_rows(tmp_path / "plain" /
                                                                        "toy-moons")


# ------------------------------------------------------------------------ LoRA under DDP
# A LoRA model's only trainable tensors are its adapters and the TwinFlow embedders; the frozen
# base must stay out of DDP's reduction, and the EMA teacher (LoRATeacher, the shared base run with
# the EMA's values) is called inside the DDP forward.

LORA_CASES = ["lora/tutorial", "lora/large"]


@needs_gloo
@pytest.mark.parametrize("case", LORA_CASES)
def test_lora_ddp_step_equals_one_step_on_the_whole_batch(ranks, case):
    """Adapter and embedder gradients of DDP on two halves == one process on the whole batch."""
    rank0, rank1 = ranks[0][f"equal/{case}"], ranks[1][f"equal/{case}"]
    student = ddp_worker.make_student("lora")
    assert sorted(rank0["ddp"]) == sorted(trainable_names(student))  # no base tensor
    assert any(name.endswith(".lora_A") for name in rank0["ddp"])
    for name, grad in rank0["ddp"].items():
        assert grad.abs().sum() > 0, name  # every trained tensor takes part in the loss
        assert torch.equal(grad, rank1["ddp"][name]), name
        torch.testing.assert_close(grad, rank0["reference"][name], rtol=1e-5, atol=2e-6,
                                   msg=lambda text, name=name: f"{case} {name}: {text}")
    assert {"loss_base", "loss_adv", "loss_rectify"} <= set(rank0["loss_names"])


@needs_gloo
@pytest.mark.parametrize("case", LORA_CASES + [f"lora/tutorial/{name}" for name in (
    "student-teacher", "frozen-teacher", "checkpointing")])
def test_lora_ranks_end_with_identical_adapters_teacher_and_untouched_base(ranks, case):
    """A few AdamW steps of a LoRA model under DDP (EMA teacher 0.9; decay 0: the student is the
    teacher; decay 1: the base with adapters off; gradient checkpointing): every tensor equal on
    both ranks, the trained ones moved, every base tensor as it started and without a gradient,
    and only the trained tensors' entries all-reduced (once per optimizer step)."""
    rank0, rank1 = ranks[0][f"train/{case}"], ranks[1][f"train/{case}"]
    trained = set(rank0["trained"])
    assert any(name.endswith(".lora_B") for name in trained)
    for name, value in rank0["student"].items():
        assert torch.equal(value, rank1["student"][name]), name
        moved = not torch.equal(value, rank0["initial"][name])
        assert moved == (name in trained), name  # adapters and embedders move, the base does not
    assert rank0["teacher"].keys() == rank1["teacher"].keys()
    assert set(rank0["teacher"]) == (set() if case.endswith("student-teacher") else trained)
    for name, value in rank0["teacher"].items():
        assert torch.equal(value, rank1["teacher"][name]), f"teacher {name}"
        if case.endswith("frozen-teacher"):  # adapters off (B = 0), the rest as it started
            start = torch.zeros_like(value) if name.endswith(".lora_B") else rank0["initial"][name]
            assert torch.equal(value, start), f"teacher {name}"
    frozen = [name for name in rank0["grads"] if name not in trained]
    assert frozen and all(rank0["grads"][name] is None for name in frozen)
    trained_entries = sum(rank0["student"][name].numel() for name in trained)
    per_step = len(rank0["reduced_elements"]) // (2 if case.endswith("checkpointing") else 3)
    assert rank0["reduced_elements"][per_step - 1::per_step] == [trained_entries] * (
        len(rank0["reduced_elements"]) // per_step)
    assert sum(rank0["reduced_elements"]) == trained_entries * (len(rank0["reduces"]) // per_step)


def lora_args(base, out, steps: int) -> list[str]:
    """A short image-free LoRA run of the tiny converted SiT, 2 micro-steps per step, EMA teacher
    (default decay); the cosine learning rate decays over 4 steps however many this part trains."""
    return ["--pretrained", str(base), "--image-free", "--model_type", "lora", "--lora_rank", "4",
            "--device", "cpu", "--batch-size", "4", "--max_train_steps", str(steps),
            "--gradient_accumulation_steps", "2", "--output_dir", str(out), "--run_name", "run",
            "--validation_every", "0", "--checkpointing_steps", "0", "--eval_samples", "0",
            "--log_every", "1", "--lr_schedule", "cosine", "--lr_decay_steps", "4"]


@needs_gloo
def test_lora_run_under_torchrun_and_its_resume(tmp_path):
    """train.py --model_type lora under torchrun's environment, 2 processes (gloo).

    Golden values: what each rank holds (equal across ranks), the base file loaded afresh, and an
    uninterrupted run for the resume.
    """
    import sample
    from test_lora_train import convert

    base = convert(tmp_path)
    whole = train_ranks(tmp_path, "whole", lora_args(base, tmp_path / "whole", 4), keep_state=True)
    first = train_ranks(tmp_path, "first", lora_args(base, tmp_path / "part", 2))
    run_dir = tmp_path / "part" / "run"
    rest = train_ranks(tmp_path, "rest", ["--resume", str(run_dir), "--max_train_steps", "4"])
    assert [rank["code"] for rank in whole + first + rest] == [0] * 6, whole[0]["err"]
    held = [torch.load(tmp_path / "ranks-whole" / f"rank{rank}.pt") for rank in range(2)]

    # both ranks hold the same model (base and adapters) and the same teacher values
    for name, value in held[0]["model"].items():
        assert torch.equal(value, held[1]["model"][name]), name
    teachers = [state["teacher"]["teacher"] for state in held]
    assert teachers[0].keys() == set(held[0]["requires_grad"])
    for name, value in teachers[0].items():
        assert torch.equal(value, teachers[1][name]), f"teacher {name}"
    assert held[0]["teacher"]["num_updates"] == held[1]["teacher"]["num_updates"] == 5

    # the frozen base: unchanged, no gradient; only adapters and TwinFlow embedders train
    fresh = load_pretrained(base)[0].state_dict()
    for name, value in fresh.items():
        if not name.startswith(("t_tgt_embedder.", "t_sign_embedder.")):
            assert torch.equal(held[0]["model"][name], value), f"base tensor {name} changed"
    assert not set(held[0]["requires_grad"]) & {
        name for name in fresh if not name.startswith(("t_tgt_embedder.", "t_sign_embedder."))}
    assert held[0]["with_grad"] == held[1]["with_grad"] == []
    assert held[0]["model"]["blocks.0.attn.qkv.lora_B"].abs().sum() > 0

    # rank 0's checkpoint: an adapter file whose student and teacher are what the ranks hold
    checkpoint = tmp_path / "whole" / "run" / "checkpoint.safetensors"
    for weights, expected in (("model", held[0]["model"]), ("ema", teachers[0])):
        model, info = load_adapter(checkpoint, weights=weights)
        assert info.used == weights
        loaded = model.state_dict()
        for name in held[0]["requires_grad"]:
            assert torch.equal(loaded[name], expected[name]), f"{weights} {name}"
    out = tmp_path / "samples.npy"
    sample.main([str(checkpoint.parent), "--nfe", "2", "--num", "2", "--out", str(out)])
    assert np.load(out).shape == (2, 4, 8, 8) and np.isfinite(np.load(out)).all()

    # 2 + 2 steps with a resume between them == 4 steps straight, bit for bit
    a, b = read_checkpoint(checkpoint), read_checkpoint(run_dir)
    assert a["info"]["step"] == b["info"]["step"] == 4
    assert a["info"]["extra"]["world_size"] == 2
    assert "rng.rank1.train" in a["rng"]
    for part in ("model", "rng"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), key
    assert a["ema"]["teacher"].keys() == b["ema"]["teacher"].keys() == teachers[0].keys()
    for key, value in a["ema"]["teacher"].items():
        assert torch.equal(value, b["ema"]["teacher"][key]), key
    assert metrics_rows(tmp_path / "whole" / "run") == metrics_rows(run_dir)
    assert not list(run_dir.glob("*.tmp*"))  # one writer (rank 0), no half-written file left
    assert [rank["err"] == "" for rank in whole + first + rest] == [True] * 6
