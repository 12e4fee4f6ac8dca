"""Pieces shared by the benchmark scripts: arguments, timing, memory, training steps, pass counts.

Benchmarks print measurements side by side; nothing here is a pass/fail test. Time convention of
every model call: see twinflow_min/transport.py (x_t = (1 - t) x + t z, t = 1 noise, negative t =
fake branch).

Timing: every variant runs once per round, the rounds interleave the variants (machine noise hits
all of them alike), and the median over rounds is reported. CPU runs use one torch thread by
default: on a machine shared with other jobs, OpenMP threads that wait for a busy core made calls
10-40x slower and erratic in our runs; --threads 0 keeps torch's default.

Peak memory of one training step (`peak_step_memory`):
  CUDA  torch.cuda.max_memory_allocated() after reset_peak_memory_stats(): every byte the caching
        allocator handed out to tensors (weights, EMA copy, optimizer state, gradients,
        activations).
  CPU   "state" + "transient": state = bytes of the distinct tensor storages alive before the step
        (parameters, buffers, EMA copy, optimizer state), summed by storage; transient = the peak
        of the CPU allocator's live-byte counter during the step, read from the "Total Allocated"
        field of the [memory] events that torch.profiler(profile_memory=True) records for every
        allocation and free made inside the step. Both count tensor bytes only (no allocator
        caching, no Python objects).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twinflow_min.checks import is_count, resolve_device  # noqa: E402
from twinflow_min.ema import EMATeacher  # noqa: E402
from twinflow_min.model import MODEL_REGISTRY, build_model  # noqa: E402
from twinflow_min.twinflow import (  # noqa: E402
    flow_matching_loss,
    sample_training_inputs,
    twinflow_losses,
)

DTYPES = {"fp32": None, "bf16": torch.bfloat16}
RECIPES = ("flow matching", "twinflow tutorial", "twinflow large")
CFG_RATIO = 0.5  # enhanced_ratio of train.py's default config, used for class-conditional models
GRAD_ROW_COST = 3  # a row with gradient: one forward + a backward counted as two forwards
LARGE_MIN_BATCH = 4  # the large recipe needs a row in each of its e2e, mul, any, adv groups
MIB = 2 ** 20


# ----------------------------------------------------------------------------------- command line
def base_parser(doc: str) -> argparse.ArgumentParser:
    """A parser with the options every script shares: --device, --dtype, --rounds, --json."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                        help="bf16 = torch.autocast(bfloat16) with float32 weights")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--json", default=None, help="also write the results to this new file")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: stable timings on a shared machine;"
                             " 0 = torch's default)")
    return parser


def check_common(parser: argparse.ArgumentParser, args) -> torch.device:
    """Validate the shared options once (one-line parser errors); returns the torch device."""
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if not is_count(args.rounds):
        parser.error(f"--rounds must be an integer >= 1, got {args.rounds}")
    if not is_count(args.threads, minimum=0):
        parser.error(f"--threads must be an integer >= 0 (0 = torch's default), got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.json is not None and Path(args.json).exists():
        parser.error(f"--json {args.json} exists; choose a new file name (results never overwrite)")
    for name in getattr(args, "models", None) or [getattr(args, "model", "toy")]:
        if name not in MODEL_REGISTRY:
            parser.error(f"unknown model {name!r}; known: {', '.join(MODEL_REGISTRY)}")
    return device


def check_counts(parser: argparse.ArgumentParser, **counts) -> None:
    """Every value (an int or a list of ints) must be an integer >= 1."""
    for name, value in counts.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(is_count(v) for v in values):
            parser.error(f"--{name.replace('_', '-')} must be integer(s) >= 1, got {value}")


def check_large_batch(parser: argparse.ArgumentParser, batch: int) -> None:
    """Scripts that run the large recipe need one row per row group."""
    if batch < LARGE_MIN_BATCH:
        parser.error(f"--batch {batch}: the large recipe needs a row in each of its 4 row groups"
                     f" (e2e, mul, any, adv); use --batch {LARGE_MIN_BATCH} or more")


def write_json(path: str | None, data: dict) -> None:
    """Write `data` to a new file (the door already refused an existing one)."""
    if path is None:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "x", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
    print(f"wrote {target}")


# ------------------------------------------------------------------------------------- timing
def autocast(device: torch.device, dtype_name: str):
    """torch.autocast for bf16, a no-op context for fp32."""
    if DTYPES[dtype_name] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype_name])


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that a wall-clock reading covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(calls: dict, rounds: int, device: torch.device, repeats: int = 1) -> dict:
    """Median milliseconds per call of each function, over `rounds` rounds that interleave them."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                call()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / repeats * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


# ------------------------------------------------------------------------------------- batches
def data_shape(model) -> tuple[int, ...]:
    """Shape of one sample of the model's data."""
    config = model.config
    if config.data_dim:
        return (config.data_dim,)
    return (config.in_channels, config.input_size, config.input_size)


def make_batch(model, batch: int, device: torch.device, seed: int = 0):
    """(x, y, y_null): Gaussian stand-in data, labels (None when unconditional), null labels."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *data_shape(model), generator=generator).to(device)
    classes = model.config.num_classes
    if classes == 0:
        return x, None, None
    y = torch.randint(classes, (batch,), generator=generator).to(device)
    return x, y, torch.full((batch,), classes, dtype=torch.long, device=device)


# ------------------------------------------------------------------------------- training steps
def make_train_step(recipe: str, model, batch: int, device: torch.device, dtype_name: str = "fp32",
                    options: dict | None = None, image_free: bool = False, cfg: bool = True):
    """A closure running one optimizer step (loss, backward, AdamW, EMA) of `recipe` on `model`.

    recipe: one of RECIPES. options: extra TwinFlow options (default: enhanced_ratio CFG_RATIO for
    a class-conditional model when cfg is True, else 0). image_free: train on x = sg(z - F(z, 1, 0))
    like the official image-free mode (one extra no-grad forward per sample).
    """
    from twinflow_min.twinflow import image_free_batch

    ema = EMATeacher(model, decay=0.99)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)
    x, y, y_null = make_batch(model, batch, device)
    conditional = y is not None
    ratio = CFG_RATIO if conditional and cfg else 0.0
    twin_options = {"enhanced_ratio": ratio, **(options or {})}
    forward_model = model

    def step():
        data = x
        if image_free:
            noise = torch.randn(x.shape, generator=generator, device=device)
            with autocast(device, dtype_name):
                data = image_free_batch(forward_model, noise, y)
        with autocast(device, dtype_name):
            if recipe == "flow matching":
                z = torch.randn(x.shape, generator=generator, device=device)
                t = torch.rand(batch, generator=generator, device=device)
                terms = flow_matching_loss(forward_model, data, y, z=z, t=t)
            else:
                name = recipe.split()[-1]
                inputs = sample_training_inputs(data, generator, recipe=name)
                terms = twinflow_losses(forward_model, ema.teacher, data, y, y_null=y_null,
                                        recipe=name, **inputs, **twin_options)
        terms["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)

    def use_forward_model(module) -> None:
        nonlocal forward_model
        forward_model = module

    step.state = (model, ema.teacher, optimizer)
    step.use_forward_model = use_forward_model  # e.g. a torch.compile'd student
    step.cfg = conditional and twin_options["enhanced_ratio"] != 0
    return step


def group_rows(batch: int) -> list[int]:
    """Rows of the large recipe's e2e, mul, any, adv blocks for this batch size (default shares)."""
    inputs = sample_training_inputs(torch.zeros(batch, 1), torch.Generator().manual_seed(0),
                                    recipe="large")
    return torch.bincount(inputs["groups"], minlength=4).tolist()


def forward_equivalents(recipe: str, batch: int, *, cfg: bool, order: int = 2,
                        image_free: bool = False) -> dict[str, float]:
    """Predicted network passes per sample of one training step, a backward counted as two forwards.

    Read off the structure of the loss code (twinflow_min/twinflow.py, twinflow_large.py):
      flow       flow matching: 1 row with gradient: 3.
      tutorial   rows with gradient: base F(x_t, t, t_tgt), F(z, 1, 0), real velocity F(x_t, t, t)
                 and adv F(x_fake_t, -t, -t): 4 x 3 = 12; teacher rollout: N (= order) no-grad
                 passes for each of the 2 RCGM rows (base, F(z, 1, 0)): 2 N; CFG target: a
                 conditional and a null teacher pass: 2 (when CFG is on); delta_v: F(y_s, -s, -s)
                 and F(y_s, s, s) without gradient: 2. N = 2: 18, or 20 with CFG.
      large      every row once with gradient: 3; adv rows' x_fake = z - F(z, 1, 0) without
                 gradient: n_adv / B; teacher rollout: N passes over the real (e2e+mul+any) rows:
                 N n_real / B; CFG: 2 teacher passes over the real rows: 2 n_real / B; delta_v on
                 the e2e rows: 2 n_e2e / B. Equal shares, N = 2: 5.25, or 6.75 with CFG.
      dmd2       generator G(z) with gradient: 3; real and fake score without gradient: 2; the
                 fake score's own denoising loss with gradient: 3. Total 8.
    image_free adds one no-grad F(z, 1, 0) pass per sample (the training batch itself).
    Returns {component: forward-equivalents per sample, ..., "total": sum}.
    """
    parts: dict[str, float] = {}
    if recipe == "flow matching":
        parts["rows with grad x3"] = GRAD_ROW_COST
    elif recipe == "twinflow tutorial":
        parts["rows with grad x3"] = 4 * GRAD_ROW_COST
        parts["teacher rollout"] = 2 * order
        parts["CFG teacher"] = 2 if cfg else 0
        parts["delta_v"] = 2
    elif recipe == "twinflow large":
        e2e, mul, any_rows, adv = group_rows(batch)
        real = e2e + mul + any_rows
        parts["rows with grad x3"] = GRAD_ROW_COST
        parts["adv x_fake"] = adv / batch
        parts["teacher rollout"] = order * real / batch if e2e + any_rows else 0
        parts["CFG teacher"] = 2 * real / batch if cfg else 0
        parts["delta_v"] = 2 * e2e / batch
    elif recipe == "dmd2":
        parts["rows with grad x3"] = 2 * GRAD_ROW_COST
        parts["score passes"] = 2
    else:
        raise ValueError(f"unknown recipe {recipe!r}")
    if image_free:
        parts["image-free x"] = 1
    parts["total"] = sum(parts.values())
    return parts


def count_forward_equivalents(step, modules, batch: int) -> float:
    """Forward-equivalents per sample that one call of `step` runs, counted with forward hooks.

    Each top-level call of a module in `modules` adds its rows, times 3 when its output needs a
    gradient.
    """
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += inputs[0].shape[0] * (GRAD_ROW_COST if output.requires_grad else 1)

    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        step()
    finally:
        for handle in handles:
            handle.remove()
    return total / batch


# ------------------------------------------------------------------------------------- memory
def state_bytes(*objects) -> int:
    """Bytes of the distinct tensor storages of modules and optimizers (shared storage once)."""
    seen: dict[int, int] = {}

    def add(tensor):
        if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()

    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            for tensor in [*obj.parameters(), *obj.buffers()]:
                add(tensor)
                add(tensor.grad)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for value in state.values():
                    add(value)
    return sum(seen.values())


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop log lines); restored on any exit."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w", encoding="utf-8") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _profiled_peak_bytes(step) -> int:
    """Peak of the CPU allocator's live-byte counter during one call of `step` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as handle:
            events = json.load(handle)["traceEvents"]
    totals = [event["args"]["Total Allocated"] for event in events
              if event.get("name") == "[memory]" and event["args"].get("Device Type") == 0]
    return max(totals, default=0)


def peak_step_memory(step, device: torch.device, state_objects) -> dict[str, float]:
    """{"state_mib", "transient_mib", "peak_mib", "method"} of one call of `step` (see above)."""
    state = state_bytes(*state_objects)
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"state_mib": before / MIB, "transient_mib": (peak - before) / MIB,
                "peak_mib": peak / MIB, "method": "torch.cuda.max_memory_allocated"}
    transient = _profiled_peak_bytes(step)
    return {"state_mib": state / MIB, "transient_mib": transient / MIB,
            "peak_mib": (state + transient) / MIB,
            "method": "storages before the step + torch.profiler peak live bytes in the step"}


def build(name: str, device: torch.device, seed: int = 0, **overrides):
    """build_model with a fixed initialisation seed, its tensors created on `device`."""
    torch.manual_seed(seed)
    with device:
        return build_model(name, **overrides).to(device)
