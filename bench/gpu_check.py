"""One prepared GPU check: at most ~8 minutes on one H100 / H200 / A100, one JSON file out.

Runs, in this order, each part only while the time budget (--budget, default 450 s) allows it; a
part or item that does not fit is recorded as skipped, never silently dropped:
  1. cifar_eager     CIFAR-S/2, batch 128, bf16 autocast: flow matching, TwinFlow tutorial and large
                     recipes; img/s (median of timed steps), ms/step, peak memory of one step.
  2. sit_xl          SiT-XL/2 (random weights, 675 M parameters), image-free, the large recipe with
                     configs/sit-xl-2-image-free.json's options, bf16: one step at batch 16 and the
                     largest batch that fits (doubling, then bisection, an out-of-memory error
                     meaning "does not fit"), with and without gradient checkpointing.
  3. sampling        bench_sampling at 1, 2, 4 NFE and 50 steps in bf16: CIFAR-S/2 (batches 1, 10,
                     256) and SiT-XL/2 (batches 1, 10, 64).
  4. cifar_compiled  part 1 with the student under torch.compile (inductor): compile time (first
                     three steps minus three steady steps), img/s, peak memory.
Peak memory: torch.cuda.max_memory_allocated (bench/_common.py). Any error stops the run with one
line naming the part; the JSON then holds the parts done so far and the error. --smoke runs the
same code on tiny models in seconds (CPU is fine) and is what the tests run. Time convention: see
twinflow_min/transport.py.

    python bench/gpu_check.py --out gpu_check.json            # on the GPU machine
    python bench/gpu_check.py --smoke --device cpu --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sampling  # noqa: E402
from _common import RECIPES, build, make_train_step, peak_step_memory, synchronize  # noqa: E402

from twinflow_min.checks import is_real, resolve_device  # noqa: E402

# the options of configs/sit-xl-2-image-free.json that shape the step's cost
SIT_OPTIONS = dict(loss_type="barron", time_weighting=True, enhanced_ratio=0.8, dist_match_cof=0.5)
FULL = dict(cifar="CIFAR-S/2", cifar_overrides={}, cifar_batch=128, sit="SiT-XL/2",
            sit_overrides={}, sit_batch=16, search_cap=1024, timed_steps=10,
            cifar_sample_batches=[1, 10, 256], sit_sample_batches=[1, 10, 64], sample_rounds=5,
            compile_backend="inductor", compile_recipes=RECIPES)
TINY = dict(hidden_size=32, depth=1, num_heads=2, input_size=8)
# --smoke: the same code on tiny stand-ins; torch.compile with the "eager" backend traces the model
# with TorchDynamo but skips code generation (inductor would need minutes of C++ builds on a CPU),
# and only for flow matching (tracing the TwinFlow recipes takes ~10 s each on 2 busy cores)
SMOKE = dict(cifar="CIFAR-T/2", cifar_overrides=TINY, cifar_batch=4, sit="SiT-XL/2",
             sit_overrides=TINY, sit_batch=4, search_cap=8, timed_steps=1,
             cifar_sample_batches=[1, 2], sit_sample_batches=[1, 2], sample_rounds=1,
             compile_backend="eager", compile_recipes=("flow matching",))
PART_MINIMUM_S = {"cifar_eager": 20, "sit_xl": 60, "sampling": 30, "cifar_compiled": 90}
ITEM_MINIMUM_S = {"cifar_eager": 5, "sit_xl": 20, "sampling": 10, "cifar_compiled": 45}
SEARCH_STOP = 8  # bisection stops when the bracket is within 1/8 of the largest batch that fit


class Budget:
    """Wall-clock budget of the whole check; `allows(part)`: may an item of `part` still start."""

    def __init__(self, seconds: float, smoke: bool):
        self.deadline = time.monotonic() + seconds
        self.smoke = smoke

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, part: str, item: bool = True) -> bool:
        if self.smoke:
            return self.left() > 0
        return self.left() >= (ITEM_MINIMUM_S if item else PART_MINIMUM_S)[part]


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def timed_steps(step, count: int, device: torch.device) -> list[float]:
    """Milliseconds of `count` single calls of `step`."""
    times = []
    for _ in range(count):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def train_row(step, batch: int, device: torch.device, steps: int) -> dict:
    """ms/step (median), img/s and peak memory of an already warm step."""
    ms = statistics.median(timed_steps(step, steps, device))
    memory = peak_step_memory(step, device, step.state)
    return {"batch": batch, "ms_per_step": ms, "img_per_s": batch / ms * 1e3,
            "peak_mib": memory["peak_mib"]}


def cifar_training(sizes: dict, device, budget: Budget, compiled: bool) -> dict:
    """Part 1 (eager) or 4 (torch.compile): the three recipes on the CIFAR model in bf16."""
    part = "cifar_compiled" if compiled else "cifar_eager"
    rows = {"model": sizes["cifar"], "batch": sizes["cifar_batch"], "dtype": "bf16"}
    recipes = sizes["compile_recipes"] if compiled else RECIPES
    for recipe in recipes:
        if not budget.allows(part):
            rows[recipe] = {"skipped": f"time budget ({budget.left():.0f} s left)"}
            continue
        model = build(sizes["cifar"], device, **sizes["cifar_overrides"])
        step = make_train_step(recipe, model, sizes["cifar_batch"], device, "bf16")
        warm = {}
        if compiled:
            step.use_forward_model(torch.compile(model, backend=sizes["compile_backend"]))
            warm["first_steps_ms"] = timed_steps(step, 3, device)
        else:
            timed_steps(step, 2, device)
        rows[recipe] = train_row(step, sizes["cifar_batch"], device, sizes["timed_steps"])
        if compiled:
            steady = rows[recipe]["ms_per_step"]
            warm["compile_s"] = sum(ms - steady for ms in warm["first_steps_ms"]) / 1e3
            rows[recipe].update(warm)
        del step, model
        free_memory(device)
    return rows


def fits(make_step, batch: int, device: torch.device) -> bool:
    """True when one step at `batch` runs; an out-of-memory error means it does not fit."""
    out_of_memory = False
    step = None
    try:
        step = make_step(batch)
        step()
        synchronize(device)
    except torch.cuda.OutOfMemoryError:
        out_of_memory = True
    del step
    free_memory(device)
    return not out_of_memory


def largest_batch(make_step, start: int, cap: int, device, budget: Budget) -> dict:
    """Largest batch that fits: double from `start` up to `cap`, then bisect the bracket."""
    fit, fail, probes = None, None, []
    batch = start
    while batch <= cap and budget.allows("sit_xl"):
        ok = fits(make_step, batch, device)
        probes.append([batch, ok])
        if not ok:
            fail = batch
            break
        fit, batch = batch, batch * 2
    while fit is not None and fail is not None and fail - fit > max(1, fit // SEARCH_STOP):
        if not budget.allows("sit_xl"):
            break
        middle = (fit + fail) // 2
        ok = fits(make_step, middle, device)
        probes.append([middle, ok])
        fit, fail = (middle, fail) if ok else (fit, middle)
    capped = fail is None and fit is not None and fit * 2 > cap
    return {"largest_fitting": fit, "smallest_failing": fail, "capped_at_search_limit": capped,
            "probes": probes}


def sit_xl(sizes: dict, device, budget: Budget) -> dict:
    """Part 2: SiT-XL/2 image-free large-recipe steps, with and without gradient checkpointing."""
    rows = {"model": sizes["sit"], "recipe": "large, image-free", "options": SIT_OPTIONS,
            "dtype": "bf16"}
    model = build(sizes["sit"], device, **sizes["sit_overrides"])
    rows["parameters"] = sum(p.numel() for p in model.parameters())

    def make_step(batch):
        return make_train_step("twinflow large", model, batch, device, "bf16",
                               options=SIT_OPTIONS, image_free=True)

    for checkpointing in (False, True):
        key = "gradient_checkpointing" if checkpointing else "no_checkpointing"
        if not budget.allows("sit_xl"):
            rows[key] = {"skipped": f"time budget ({budget.left():.0f} s left)"}
            continue
        model.config.gradient_checkpointing = checkpointing  # read at every forward
        step = make_step(sizes["sit_batch"])
        timed_steps(step, 2, device)
        result = {"at_batch": train_row(step, sizes["sit_batch"], device, 3)}
        del step
        free_memory(device)
        search = largest_batch(make_step, sizes["sit_batch"] * 2, sizes["search_cap"], device,
                               budget)
        largest = search["largest_fitting"]
        if largest is not None and budget.allows("sit_xl"):
            step = make_step(largest)
            timed_steps(step, 1, device)
            search["at_largest"] = train_row(step, largest, device, 2)
            del step
            free_memory(device)
        result["largest_batch"] = search
        rows[key] = result
    model.config.gradient_checkpointing = False
    return rows


def sampling(sizes: dict, device, budget: Budget) -> dict:
    """Part 3: bench_sampling's table in bf16 for the CIFAR model and SiT-XL/2."""
    rows = {"dtype": "bf16", "rounds": sizes["sample_rounds"]}
    plan = [(sizes["cifar"], sizes["cifar_sample_batches"], sizes["cifar_overrides"]),
            (sizes["sit"], sizes["sit_sample_batches"], sizes["sit_overrides"])]
    for name, batches, overrides in plan:
        if not budget.allows("sampling"):
            rows[name] = {"skipped": f"time budget ({budget.left():.0f} s left)"}
            continue
        rows[name] = bench_sampling.measure(name, batches, device, "bf16",
                                            sizes["sample_rounds"], **overrides)
        free_memory(device)
    return rows


def environment(device: torch.device, budget_s: float, smoke: bool) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "budget_s": budget_s, "smoke": smoke}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gib=properties.total_memory / 2 ** 30,
                    cuda=torch.version.cuda)
    return info


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the JSON file to write (must not exist)")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--budget", type=float, default=450.0,
                        help="seconds for the whole check; parts that no longer fit are skipped")
    parser.add_argument("--smoke", action="store_true", help="tiny models: a seconds-long dry run")
    args = parser.parse_args(argv)
    if Path(args.out).exists():
        parser.error(f"--out {args.out} exists; choose a new file name (results never overwrite)")
    if not Path(args.out).resolve().parent.is_dir():
        parser.error(f"--out {args.out}: its folder does not exist; create it first")
    if not is_real(args.budget) or args.budget <= 0:
        parser.error(f"--budget must be a positive number of seconds, got {args.budget}")
    try:
        args.device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if args.device.type != "cuda" and not args.smoke:
        parser.error(f"device {args.device} is not a GPU: the full check needs CUDA;"
                     f" use --smoke for a dry run elsewhere")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device, budget = args.device, Budget(args.budget, args.smoke)
    sizes = SMOKE if args.smoke else FULL
    if device.type == "cpu":
        torch.set_num_threads(1)  # a shared CPU: one thread keeps the smoke run fast (_common.py)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    report = {"environment": environment(device, args.budget, args.smoke), "parts": {}}
    parts = [("cifar_eager", lambda: cifar_training(sizes, device, budget, compiled=False)),
             ("sit_xl", lambda: sit_xl(sizes, device, budget)),
             ("sampling", lambda: sampling(sizes, device, budget)),
             ("cifar_compiled", lambda: cifar_training(sizes, device, budget, compiled=True))]
    start, failed = time.monotonic(), None
    for name, run in parts:
        if not budget.allows(name, item=False):
            report["parts"][name] = {"skipped": f"time budget ({budget.left():.0f} s left)"}
            continue
        part_start = time.monotonic()
        print(f"gpu_check: {name} ({budget.left():.0f} s of budget left)", flush=True)
        try:
            report["parts"][name] = run()
        except Exception as error:  # noqa: BLE001  any error stops the check with one line
            failed = f"stopped in part {name}: {type(error).__name__}: {error}".splitlines()[0]
            report["error"] = failed
            break
        report["parts"][name]["elapsed_s"] = time.monotonic() - part_start
        free_memory(device)
    report["elapsed_s"] = time.monotonic() - start
    with open(args.out, "x", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    if failed:
        print(f"gpu_check: {failed} (results so far in {args.out})", file=sys.stderr)
        raise SystemExit(1)
    print(f"gpu_check: done in {report['elapsed_s']:.0f} s, wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
