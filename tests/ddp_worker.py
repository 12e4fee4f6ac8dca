"""Processes for tests/test_distributed.py: `spawn` and the 2-process DDP checks (`main`, gloo).

`spawn(fn, world_size, *args)` starts `world_size` processes from a fork server that imported torch
once (fast), and gives each torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), so code under test reads it exactly as under torchrun. `main(out_dir)` also runs as

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py OUT_DIR

Every rank runs the same checks and saves what it saw to OUT_DIR/rank<r>.pt; the test compares.
The step under test is built from public pieces (twinflow_losses, flow_matching_loss,
sample_training_inputs, EMATeacher; for LoRA apply_lora and LoRATeacher) wrapped by
twinflow_min.distributed, with the per-row draws made once per rank from the rank's generator
(rank_seed) and shared with rank 0's single-process reference. Time convention: see
twinflow_min/transport.py.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twinflow_min.checkpoint import TWINFLOW_PREFIXES  # noqa: E402
from twinflow_min.distributed import (  # noqa: E402
    PeerFailed,
    gather_rank_states,
    micro_step_sync,
    rank_rng_states,
    rank_seed,
    start_distributed,
    wrap_loss,
)
from twinflow_min.ema import EMATeacher  # noqa: E402
from twinflow_min.lora import (  # noqa: E402
    LoRATeacher,
    apply_lora,
    has_lora,
    trainable_names,
    trainable_parameters,
)
from twinflow_min.model import build_model  # noqa: E402
from twinflow_min.twinflow import (  # noqa: E402
    TwinFlowOptions,
    flow_matching_loss,
    sample_training_inputs,
    twinflow_losses,
)

SEED, BATCH, NUM_CLASSES = 7, 8, 4
RECIPES = {"fm": None, "tutorial": TwinFlowOptions(),
           "large": TwinFlowOptions(recipe="large", time_weighting=True)}
TINY_DIT = dict(input_size=8, patch_size=2, in_channels=3, num_classes=NUM_CLASSES,
                hidden_size=32, depth=2, num_heads=2)


def make_student(kind: str, **overrides) -> torch.nn.Module:
    """The toy MLP, a tiny DiT, or ("lora") a "pretrained" tiny DiT (every base weight drawn at
    random, so no zero-initialised layer blocks a gradient) with rank-4 adapters on the default
    targets, every B drawn at random too (as after some training, so A gets a gradient)."""
    torch.manual_seed(SEED)  # identical initialisation on every rank
    if kind == "toy":
        return build_model("toy", **overrides)
    model = build_model("CIFAR-T/2", **{**TINY_DIT, **overrides})
    if kind != "lora":
        return model
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and not name.startswith(TWINFLOW_PREFIXES):
                parameter.copy_(0.1 * torch.randn(parameter.shape))
        for name in apply_lora(model, rank=4, seed=SEED):
            lora_B = model.get_submodule(name).lora_B
            lora_B.copy_(0.05 * torch.randn(lora_B.shape))
    return model


def make_teacher(student: torch.nn.Module, decay: float = 0.9):
    """The EMA teacher train.py would build: over the trainable tensors only for a LoRA model."""
    return (LoRATeacher if has_lora(student) else EMATeacher)(student, decay=decay)


def trained_parameters(student: torch.nn.Module) -> list:
    return trainable_parameters(student) if has_lora(student) else list(student.parameters())


def draw(kind: str, recipe: str, generator: torch.Generator, micro_batches: int = 1) -> list:
    """[(x, y, inputs) per micro-batch] from one rank's generator, as training draws them."""
    out = []
    for micro_step in range(micro_batches):
        if kind == "toy":
            x, y = torch.randn(BATCH, 2, generator=generator) * 0.5 + 1.0, None
        else:
            x = torch.rand(BATCH, 3, 8, 8, generator=generator) * 2 - 1
            y = torch.randint(NUM_CLASSES + 1, (BATCH,), generator=generator)  # null rows too
        if RECIPES[recipe] is None:
            inputs = {"z": torch.randn(x.shape, generator=generator),
                      "t": torch.rand(BATCH, generator=generator)}
        else:
            inputs = sample_training_inputs(x, generator, recipe=RECIPES[recipe].recipe,
                                            accumulation_index=micro_step,
                                            accumulation_steps=micro_batches)
        out.append((x, y, inputs))
    return out


class FixedDraws:
    """An objective (twinflow_min/objective.py signature) that uses draws made beforehand.

    A class-conditional model also trains the CFG-enhanced target (enhanced_ratio 0.5), so the
    teacher's null-class passes run inside the DDP forward too.
    """

    def __init__(self, recipe: str, draws: list, conditional: bool):
        self.options, self.draws = RECIPES[recipe], draws
        if self.options is not None and conditional:
            self.options = dataclasses.replace(self.options, enhanced_ratio=0.5)

    def __call__(self, model, teacher, x, y, *, step: int, micro_step: int) -> dict:
        inputs = self.draws[micro_step][2]
        if self.options is None:
            return flow_matching_loss(model, x, y, z=inputs["z"], t=inputs["t"])
        y_null = None if y is None else torch.full_like(y, NUM_CLASSES)
        return twinflow_losses(model, teacher, x, y, y_null=y_null, **inputs, options=self.options)


def cat_draws(per_rank: list) -> list:
    """The whole batch of every micro-step: the ranks' rows one after the other."""
    whole = []
    for parts in zip(*per_rank):
        x = torch.cat([p[0] for p in parts])
        y = None if parts[0][1] is None else torch.cat([p[1] for p in parts])
        inputs = {key: torch.cat([p[2][key] for p in parts]) for key in parts[0][2]}
        whole.append((x, y, inputs))
    return whole


def rank_generator(rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(rank_seed(SEED, rank))


def one_step_equivalence(run, kind: str, recipe: str, micro_batches: int) -> dict:
    """Gradients of one DDP step (this rank's rows) vs one process on every rank's rows."""
    per_rank = [draw(kind, recipe, rank_generator(r), micro_batches) for r in range(run.world_size)]
    student = make_student(kind)
    teacher = make_teacher(student)
    teacher.update(student)
    mine = per_rank[run.rank]
    module = wrap_loss(student, FixedDraws(recipe, mine, kind != "toy"), run)
    for micro_step, (x, y, _) in enumerate(mine):
        with micro_step_sync(module, micro_step, micro_batches):
            terms = module(teacher.teacher, x, y, micro_step=micro_step, step=0)
            (terms["loss"] / micro_batches).backward()
    ddp_grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.requires_grad}

    reference = make_student(kind)
    ref_teacher = make_teacher(reference)
    ref_teacher.update(reference)
    whole = cat_draws(per_rank)
    objective = FixedDraws(recipe, whole, kind != "toy")
    for micro_step, (x, y, _) in enumerate(whole):
        terms = objective(reference, ref_teacher.teacher, x, y, step=0, micro_step=micro_step)
        (terms["loss"] / micro_batches).backward()
    ref_grads = {n: p.grad.clone() for n, p in reference.named_parameters() if p.requires_grad}
    return {"ddp": ddp_grads, "reference": ref_grads, "loss_names": sorted(terms)}


def train_few_steps(run, kind: str, recipe: str, steps: int = 3, micro_batches: int = 2,
                    decay: float = 0.9, **model_overrides) -> dict:
    """A few AdamW steps with each rank's own draws; the state every rank ends with."""
    generator = rank_generator(run.rank)
    student = make_student(kind, **model_overrides)
    initial = {name: value.clone() for name, value in student.state_dict().items()}
    teacher = make_teacher(student, decay)
    optimizer = torch.optim.AdamW(trained_parameters(student), lr=1e-3)
    objective = FixedDraws(recipe, [], kind != "toy")
    module = wrap_loss(student, objective, run)
    reduces_per_micro_step: list[int] = []  # gradient buckets all-reduced in each micro-step
    reduced_elements: list[int] = []  # and their gradient entries
    if run.enabled:
        module.register_comm_hook((reduces_per_micro_step, reduced_elements),
                                  counting_allreduce_hook)
    for step in range(steps):
        teacher.update(student)
        objective.draws = draw(kind, recipe, generator, micro_batches)
        for micro_step, (x, y, _) in enumerate(objective.draws):
            reduces_per_micro_step.append(0)
            reduced_elements.append(0)
            with micro_step_sync(module, micro_step, micro_batches):
                terms = module(teacher.teacher, x, y, step, micro_step)
                (terms["loss"] / micro_batches).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    teacher.update(student)
    teacher_values = teacher.state_dict().get("teacher", {})  # LoRA: the trainable tensors
    return {"student": {k: v.clone() for k, v in student.state_dict().items()},
            "teacher": {k: v.clone() for k, v in teacher_values.items()},
            "initial": initial,
            "trained": trainable_names(student) if has_lora(student) else list(initial),
            "grads": {n: p.grad for n, p in student.named_parameters()},
            "reduces": reduces_per_micro_step,
            "reduced_elements": reduced_elements,
            "first_x": draw(kind, recipe, rank_generator(run.rank))[0][0]}


def counting_allreduce_hook(state: tuple, bucket):
    """DDP's default all-reduce (mean over ranks), counting the buckets reduced per micro-step and
    their entries."""
    import torch.distributed as dist
    counts, elements = state
    counts[-1] += 1
    elements[-1] += bucket.buffer().numel()
    tensor = bucket.buffer().div_(dist.get_world_size())
    return dist.all_reduce(tensor, async_op=True).get_future().then(lambda fut: fut.value()[0])


def unused_parameter_error(run) -> str:
    """Negative control: a student with a parameter outside the graph must stop DDP at step 2."""
    student = make_student("toy")
    student.unused = torch.nn.Parameter(torch.zeros(3))
    draws = draw("toy", "fm", rank_generator(run.rank))
    module = wrap_loss(student, FixedDraws("fm", draws, False), run)
    try:
        for step in range(2):
            x, y, _ = draws[0]
            module(student, x, y, step, 0)["loss"].backward()
    except RuntimeError as error:
        return str(error)
    return ""


def failure_agreement(run) -> dict:
    """Rank 1 raises in guarded(); every rank must stop, rank 0 with PeerFailed naming rank 1."""
    try:
        with run.guarded():
            if run.rank == 1:
                raise ValueError("bad batch on purpose\nsecond line")
    except PeerFailed as error:
        return {"kind": "PeerFailed", "rank": error.rank, "error_kind": error.kind,
                "message": error.message}
    except ValueError as error:
        return {"kind": "ValueError", "message": str(error)}
    with run.guarded():
        pass  # nobody fails: passes through on every rank
    return {"kind": "none"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _child(rank: int, fn, world_size: int, port: int, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    fn(*args)


def spawn(fn, world_size: int, *args, timeout: float = 240.0) -> None:
    """Run fn(*args) in `world_size` forked processes with torchrun's environment; wait for all.

    A child that raises makes this raise (torch.multiprocessing kills the others); a run still going
    after `timeout` seconds is killed and reported as a hang.
    """
    # forkserver: children fork from a clean process that imported torch once (fast), not from
    # the test process, whose threads (thread pools, earlier tests) could hold locks in a fork
    mp.get_context("forkserver").set_forkserver_preload(["torch", "train", "ddp_worker"])
    context = mp.start_processes(_child, args=(fn, world_size, free_port(), args),
                                 nprocs=world_size, join=False, start_method="forkserver")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"{world_size} processes still running after {timeout:.0f} s (hang)")


def train_rank(out_dir: str, argv: list[str], nan_from_batch: int | None = None,
               keep_state: bool = False) -> None:
    """train.main(argv) on this rank; its exit code and summary go to OUT_DIR/rank<r>.json, what
    it prints to OUT_DIR/rank<r>.out and rank<r>.err.

    nan_from_batch: rank 1's toy batches turn to NaN from that (0-based) batch on.
    keep_state: what this rank holds when training ends goes to OUT_DIR/rank<r>.pt
    (`keep_final_state`).
    """
    import json

    import train
    from twinflow_min import data_sources

    rank = int(os.environ["RANK"])
    for fd, name in ((1, "out"), (2, "err")):  # what this rank prints, for the test to read
        with open(Path(out_dir, f"rank{rank}.{name}"), "w") as sink:
            os.dup2(sink.fileno(), fd)
    if nan_from_batch is not None and rank == 1:
        original, calls = data_sources.ToyData.next_batch, []

        def poisoned(self):
            x, y = original(self)
            calls.append(1)
            return (x * float("nan"), y) if len(calls) > nan_from_batch else (x, y)

        data_sources.ToyData.next_batch = poisoned
    if keep_state:
        keep_final_state(train, Path(out_dir, f"rank{rank}.pt"))
    try:
        summary, code = train.main(argv), 0
    except SystemExit as stop:
        summary, code = None, stop.code
    sys.stdout.flush()
    sys.stderr.flush()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"code": code, "summary": summary}))


def keep_final_state(train, path: Path) -> None:
    """Make train.py save, when its loop ends, this rank's model (every tensor, base included),
    which tensors require grad, which hold a gradient, and the teacher's state, to `path`."""
    built = train.build_data_and_model
    finish = train.finish
    seen = {}

    def build(*args, **kwargs):
        data, model = built(*args, **kwargs)
        seen["model"] = model
        return data, model

    def finish_and_save(cfg, stop, run_dir, path_, done, data, teacher, *rest):
        model = seen["model"]
        torch.save({"model": {k: v.clone() for k, v in model.state_dict().items()},
                    "requires_grad": [n for n, p in model.named_parameters() if p.requires_grad],
                    "with_grad": [n for n, p in model.named_parameters() if p.grad is not None],
                    "teacher": teacher.state_dict()}, path)
        return finish(cfg, stop, run_dir, path_, done, data, teacher, *rest)

    train.build_data_and_model = build
    train.finish = finish_and_save


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    run = start_distributed("cpu")
    results: dict = {"rank": run.rank, "world_size": run.world_size, "timings": {}}
    tic = time.perf_counter()
    for kind in ("toy", "dit"):
        for recipe in RECIPES:
            results[f"equal/{kind}/{recipe}"] = one_step_equivalence(run, kind, recipe, 1)
    results["equal/toy/tutorial/accumulate"] = one_step_equivalence(run, "toy", "tutorial", 2)
    for recipe in ("tutorial", "large"):
        results[f"equal/lora/{recipe}"] = one_step_equivalence(run, "lora", recipe, 1)
    results["timings"]["equivalence"] = time.perf_counter() - tic
    tic = time.perf_counter()
    for kind in ("toy", "dit"):
        for recipe in RECIPES:
            results[f"train/{kind}/{recipe}"] = train_few_steps(run, kind, recipe)
    results["train/dit/tutorial/checkpointing"] = train_few_steps(
        run, "dit", "tutorial", steps=2, micro_batches=1, gradient_checkpointing=True)
    for recipe in ("tutorial", "large"):
        results[f"train/lora/{recipe}"] = train_few_steps(run, "lora", recipe)
    for name, decay in (("student-teacher", 0.0), ("frozen-teacher", 1.0)):
        results[f"train/lora/tutorial/{name}"] = train_few_steps(run, "lora", "tutorial",
                                                                 decay=decay)
    results["train/lora/tutorial/checkpointing"] = train_few_steps(
        run, "lora", "tutorial", steps=2, micro_batches=1, gradient_checkpointing=True)
    results["timings"]["training"] = time.perf_counter() - tic
    generator = rank_generator(run.rank)
    tensors, data_states = gather_rank_states(run, {"rng.train": generator.get_state()},
                                              {"rank": run.rank})
    results["rank_states"] = {"tensors": tensors, "data_states": data_states,
                              "mine": rank_rng_states(tensors, run.rank)["rng.train"]}
    results["any"] = [run.any(run.rank == 1), run.any(False)]
    results["failure"] = failure_agreement(run)
    results["unused"] = unused_parameter_error(run)
    torch.save(results, Path(out_dir) / f"rank{run.rank}.pt")
    run.close()


if __name__ == "__main__":
    main(sys.argv[1])
