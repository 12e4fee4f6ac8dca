r"""Sample from a TwinFlow checkpoint with the UCGM sampler (presets or every knob); evaluate it.

Paper: TwinFlow (arXiv:2512.05150) samples at guidance 0 with the UCGM sampler (official
`inference.py`; docs/math.md#ucgm-sampler, docs/math.md#sampler-presets). The model is rebuilt from
the file alone (its config travels in the safetensors metadata). Time convention: see
twinflow_min/transport.py.

    python sample.py outputs/toy-moons --nfe 1 --num 4000 --out samples.npy
    python sample.py outputs/cifar10 --preset any8 --order 2 --num 64 --out grid.png
    python sample.py outputs/cifar10 --fid pt_inception-2015-12-05-6726825d.pth \
        --fid-data cifar-10-python.tar.gz
    python sample.py sit-xl.safetensors --steps 30 --style mul --cfg-scale 1.5 \
        --cfg-interval 0 0.7 --vae vae.safetensors
    python sample.py outputs/sit-xl-2-image-free --nfe 1 --vae vae.safetensors   # a LoRA run

A LoRA run's checkpoint or adapter file (model_type lora, twinflow_min/lora.py) holds no base
weights: its base is the file named in its metadata, or --base FILE, and must have the sha256
recorded there; the adapters are merged into the base for sampling.

Sample i depends only on (--seed, i): its noise and its sampler noise come from a generator of its
own. Training checkpoints are sampled with their EMA weights by default (--weights auto); the
official tutorial samples the student (--weights model). Outputs are never overwritten unless
--overwrite. Exit codes: 0 done, 2 refused input (one line on stderr), 130 Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import sys


def _stopped_while_importing(signum, frame):
    print(
        "sample.py: stopped by Ctrl-C during start-up; nothing was written",
        file=sys.stderr,
        flush=True,
    )
    os._exit(128 + signum)


if __name__ == "__main__":  # Ctrl-C while the imports below load: one line, no traceback
    signal.signal(signal.SIGINT, _stopped_while_importing)

import argparse  # noqa: E402 (the handler above comes first)
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from twinflow_min import metrics
from twinflow_min.checkpoint import load_pretrained
from twinflow_min.checks import EXIT_REFUSED, INT64_MAX, CheckpointError, is_count, resolve_device
from twinflow_min.data import load_dataset, sample_toy
from twinflow_min.evaluate import ODE_OPTIONS
from twinflow_min.lora import is_adapter_file, load_adapter, merge_lora
from twinflow_min.plots import image_grid_png, scatter_png
from twinflow_min.run_dir import training_config
from twinflow_min.sampler import (
    KNOB_DEFAULTS,
    MAX_STEPS,
    PRESET_SOURCES,
    PRESETS,
    SDE,
    grid_intervals,
    inert_knobs,
    preset_for_nfe,
    ucgm_sample,
)
from twinflow_min.train_state import CHECKPOINT_NAME

OUTPUT_DIR = (
    "samples"  # default outputs go to <run>/samples/, never next to the training run's files
)

# One flag per sampler knob (sampler.KNOB_DEFAULTS): (flag, nargs, metavar, help)
KNOB_FLAGS = {
    "steps": ("--steps", None, "N", "grid steps (model calls for order 1)"),
    "style": ("--style", None, "few|any|mul", "target time: few 0, any t_next, mul t_cur"),
    "order": (
        "--order",
        None,
        "1|2",
        "2 = our Heun-type corrector (docs/math.md#official-differences)",
    ),
    "stochastic_ratio": (
        "--stochastic-ratio",
        None,
        "RHO",
        "re-noising ratio in [0, 1], or SDE (any case)",
    ),
    "extrapolation_ratio": (
        "--extrapolation-ratio",
        None,
        "E",
        "extrapolation of x_hat, z_hat (>= 0)",
    ),
    "kumaraswamy_abc": ("--kumaraswamy", 3, ("A", "B", "C"), "grid warp (1 - (1 - u^a)^b)^c"),
    "boundary_gaps": ("--boundary-gaps", 2, ("G0", "G1"), "grid gaps at t = 1 and t = 0"),
    "cfg_scale": (
        "--cfg-scale",
        None,
        "W",
        "classifier-free guidance (0 = off; TwinFlow models: 0)",
    ),
    "cfg_interval": (
        "--cfg-interval",
        2,
        ("LOW", "HIGH"),
        "model times where guidance applies (needs --cfg-scale > 0)",
    ),
}
# UCGM `uni_sample` docstring: extrapolation ratio "recommended range for multi-step models:
# [0.2, 0.6]"; neither it nor TwinFlow's `sampling_loop` refuses any value >= 0.
EXTRAPOLATION_RECOMMENDED = (0.2, 0.6)


class SampleError(Exception):
    """A bad command line, file or checkpoint: main() prints it as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise SampleError(message)


def _preset_table() -> str:
    rows = [
        f"  {name:<11} {', '.join(f'{k}={v}' for k, v in options.items())}"
        f"  ({PRESET_SOURCES[name]})"
        for name, options in PRESETS.items()
    ]
    return (
        "presets (--preset NAME, or --nfe 1 / 2 / 4 for 1nfe / 2nfe / 4nfe; knob flags such as "
        "--steps override them):\n" + "\n".join(rows)
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        description=__doc__,
        epilog=_preset_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint",
        help="a run directory, its checkpoint.safetensors, or a converted "
        "pretrained .safetensors file",
    )
    parser.add_argument(
        "--preset", choices=list(PRESETS), help="named sampler settings (see below)"
    )
    parser.add_argument(
        "--nfe",
        metavar="N",
        help="--nfe N = the official N-NFE preset for N = 1, 2, 4 (1nfe, 2nfe, 4nfe), a few-step "
        "grid of N steps for other N; knob flags such as --steps override it, as they override "
        "--preset (default 1 when neither --preset nor --ode)",
    )
    parser.add_argument("--ode", action="store_true", help="the 50-step ODE of training evaluation")
    for name, (flag, nargs, metavar, text) in KNOB_FLAGS.items():
        parser.add_argument(
            flag,
            dest=name,
            nargs=nargs,
            metavar=metavar,
            help=f"{text} (default {KNOB_DEFAULTS[name]} unless the preset sets it)",
        )
    parser.add_argument("--num", help="number of samples (default 64; 50000 with --fid)")
    parser.add_argument("--batch-size", default="500", help="samples per model call (default 500)")
    parser.add_argument(
        "--out",
        help=f"output .npy (float32 samples) or .png (scatter / image grid); default "
        f"<run>/{OUTPUT_DIR}/<preset>_seed<S>.png, or custom-<hash>_seed<S>.png when the "
        f"settings match no preset (the printed JSON lists them)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--seed", default="0", help="sample i depends only on (seed, i) (default 0)"
    )
    parser.add_argument(
        "--weights",
        choices=("auto", "ema", "model"),
        default="auto",
        help="which weights of a training checkpoint (auto = EMA when present; the "
        "official tutorial samples the student = model)",
    )
    parser.add_argument(
        "--base",
        metavar="FILE",
        help="base model of a LoRA checkpoint or adapter file (default: the file named in its "
        "metadata; its sha256 must match)",
    )
    parser.add_argument("--class-label", help="class of every sample (default: i mod num_classes)")
    parser.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)"
    )
    parser.add_argument(
        "--vae", help="SD-VAE (diffusers layout) .safetensors: decode latents to images"
    )
    parser.add_argument(
        "--fid",
        metavar="INCEPTION_WEIGHTS",
        help="pytorch-fid weights (.pth or .safetensors): report FID against --fid-data",
    )
    parser.add_argument(
        "--proxy-metrics",
        action="store_true",
        help="no Inception weights: random-feature Frechet distance to --fid-data and "
        "the gap between 1-NFE and 50-step samples (never called FID)",
    )
    parser.add_argument(
        "--fid-data", help="reference images: CIFAR-10 archive/folder or class folders"
    )
    parser.add_argument(
        "--fid-cache", help="cache of the reference statistics (default <run>/fid_reference.npz)"
    )
    return parser


# ---------- Checks at the door: every value is parsed and checked here, once ----------


def _integer(text, flag: str, minimum: int, maximum: int = INT64_MAX) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise SampleError(f"{flag} must be an integer, got {text!r}") from None
    in_range = is_count(value, minimum=minimum) and value <= maximum
    if not in_range:
        raise SampleError(f"{flag} must be an integer in [{minimum}, {maximum}], got {text}")
    return value


def _order(text) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = None
    if value not in (1, 2):
        raise SampleError(f"--order must be 1 or 2, got {text!r}")
    return value


def _number(text, flag: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise SampleError(f"{flag} must be a number, got {text!r}") from None
    if not np.isfinite(value):
        raise SampleError(f"{flag} must be a finite number, got {text!r}")
    return value


def _knob(name: str, raw):
    flag = KNOB_FLAGS[name][0]
    if name == "steps":
        return _integer(raw, flag, 1, MAX_STEPS)
    if name == "order":
        return _order(raw)
    if name == "style":
        return raw
    if name == "stochastic_ratio":
        return SDE if str(raw).upper() == SDE else _number(raw, flag)
    if isinstance(raw, list):
        return tuple(_number(value, flag) for value in raw)
    return _number(raw, flag)


def _named_settings() -> dict:
    """Every named sampler setting as full `ucgm_sample` keywords: the presets and --ode's ODE."""
    named = {name: {**KNOB_DEFAULTS, **preset} for name, preset in PRESETS.items()}
    named["ode50"] = {**KNOB_DEFAULTS, **ODE_OPTIONS}
    return named


def _canonical(value):
    """A settings value in one spelling: numbers as floats, pairs and triples as lists."""
    if isinstance(value, (tuple, list)):
        return [_canonical(v) for v in value]
    return value if isinstance(value, str) else float(value)


def output_name(options: dict) -> str:
    """The default output name of full sampler settings (a function of the settings alone).

    The preset's name when the settings equal a preset exactly ("ode50" for --ode), else
    "custom-" and the first 8 hex digits of the sha256 of the sorted settings with numbers as
    floats (--kumaraswamy 1 1 2 and 1.0 1.0 2.0 share a name; different settings do not).
    """
    for name, settings in _named_settings().items():
        if settings == options:
            return name
    canonical = json.dumps({key: _canonical(options[key]) for key in sorted(options)})
    return "custom-" + hashlib.sha256(canonical.encode()).hexdigest()[:8]


def sampler_options(args) -> tuple[dict, str]:
    """(ucgm_sample keywords, output name) from --preset / --nfe / --ode and the knob flags.

    The name is `output_name` of the full settings, e.g. "1nfe" for --nfe 1, --preset 1nfe or
    --steps 1 alike."""
    chosen = [
        flag
        for flag, given in (("--preset", args.preset), ("--nfe", args.nfe), ("--ode", args.ode))
        if given
    ]
    if len(chosen) > 1:
        raise SampleError(f"{' and '.join(chosen)} both choose the sampler; give one of them")
    if args.preset:
        options = dict(PRESETS[args.preset])
    elif args.ode:
        options = dict(ODE_OPTIONS)
    else:
        nfe = _integer(args.nfe, "--nfe", 1, MAX_STEPS) if args.nfe else 1
        options = preset_for_nfe(nfe)
    overrides = {
        key: _knob(key, getattr(args, key)) for key in KNOB_FLAGS if getattr(args, key) is not None
    }
    options = {**KNOB_DEFAULTS, **options, **overrides}
    # dry-run the sampler's own checks on a 1-sample grid: one line for any out-of-range knob
    probe = dict(options, steps=options["steps"])
    try:
        ucgm_sample(
            lambda x, t, r, y: torch.zeros_like(x),
            torch.zeros(1, 1),
            generator=torch.Generator(),
            y=torch.zeros(1, dtype=torch.long),
            y_null=torch.zeros(1, dtype=torch.long),
            **probe,
        )
    except (ValueError, TypeError) as error:
        raise SampleError(f"sampler setting: {error}") from None
    if args.cfg_interval is not None and not options["cfg_scale"] > 0:
        raise SampleError(
            "--cfg-interval only applies with --cfg-scale > 0; add --cfg-scale W or drop "
            "--cfg-interval"
        )
    return options, output_name(options)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def sampler_notes(args, options: dict) -> list[str]:
    """Notes (not refusals) on flags that change nothing or contradict a name: --steps against
    --nfe, knobs that are inert on this grid (`sampler.inert_knobs`), an extrapolation ratio above
    the recommended range."""
    notes = []
    if args.nfe and args.steps is not None and options["steps"] != int(args.nfe):
        nfe = int(args.nfe)
        notes.append(f"--steps {options['steps']} overrides the {nfe}-step preset of --nfe {nfe}")
    keys = ("steps", "order", "stochastic_ratio", "extrapolation_ratio")
    all_inert = inert_knobs(**{key: options[key] for key in keys})
    inert_keys = [key for key in all_inert if getattr(args, key) is not None]  # flags given
    inert = [f"{KNOB_FLAGS[key][0]} {getattr(args, key)}" for key in inert_keys]
    if inert:
        steps, n = options["steps"], grid_intervals(options["steps"], options["order"])
        names = inert[0] if len(inert) == 1 else f"{', '.join(inert[:-1])} and {inert[-1]}"
        grid = _count(n, "step")
        if n != steps:
            grid += f" (--order 2 walks ceil({steps} / 2) grid steps)"
        late = "extrapolation_ratio" in inert_keys and n > 1
        why = "; extrapolation acts from 4 steps on" if late else ""
        verb = "has" if len(inert) == 1 else "have"
        notes.append(f"{names} {verb} no effect with {grid}{why}")
    high = EXTRAPOLATION_RECOMMENDED[1]
    acting = "extrapolation_ratio" not in all_inert
    if acting and options["extrapolation_ratio"] > high:
        low = EXTRAPOLATION_RECOMMENDED[0]
        notes.append(
            f"--extrapolation-ratio {options['extrapolation_ratio']:g} is above [{low}, {high}], "
            f"the range UCGM recommends for multi-step models (no official limit; applied)"
        )
    return notes


def _note(text: str) -> None:
    print(f"sample.py: note: {text}", file=sys.stderr)


def _existing_file(path, flag: str) -> Path:
    if path is not None and not Path(path).is_file():
        raise SampleError(f"{flag} {path}: no such file")
    return Path(path) if path is not None else None


def _output_path(args, run_dir: Path, name: str, seed: int) -> Path:
    """--out, else RUN/samples/<name>[-student]_seed<S>.png (-student: --weights model, which
    samples other weights than the default); refused if it exists (unless --overwrite)."""
    weights = "-student" if args.weights == "model" else ""
    default = run_dir / OUTPUT_DIR / f"{name}{weights}_seed{seed}.png"
    path = Path(args.out) if args.out else default
    if path.is_dir():
        raise SampleError(f"--out {path} is a folder; give a file name ending in .npy or .png")
    if path.suffix not in (".npy", ".png"):
        raise SampleError(f"--out must end in .npy or .png, got {path}")
    if path.exists() and not args.overwrite:
        raise SampleError(f"{path} exists; pass --overwrite to replace it or choose another --out")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise SampleError(f"--out {path}: {parent} is a file, not a folder")
    return path


def _check_model(model, checkpoint: Path, class_label, options: dict) -> None:
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise SampleError(
            f"{checkpoint} holds {len(bad)} tensors with NaN/inf values (e.g. {bad[0]}); "
            f"it cannot give finite samples: use an earlier checkpoint"
        )
    num_classes = model.config.num_classes
    if class_label is not None and not num_classes:
        raise SampleError(
            "--class-label: this model is unconditional (num_classes 0); drop the flag"
        )
    if class_label is not None and class_label >= num_classes:
        raise SampleError(
            f"--class-label must be in [0, {num_classes - 1}] for this model, got {class_label}"
        )
    if options["cfg_scale"] > 0 and not num_classes:
        raise SampleError("--cfg-scale needs a class-conditional model; this one is unconditional")


def main(argv: list[str] | None = None) -> dict:
    """Run sample.py; returns its results. A refused input prints one line "sample.py: error: ..."
    on stderr and exits with 2 (as train.py); Ctrl-C exits with 130."""
    try:
        return run(build_parser().parse_args(argv))
    except (SampleError, CheckpointError) as error:
        print(f"sample.py: error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_REFUSED) from None
    except KeyboardInterrupt:  # Ctrl-C: outputs are written whole at the end, so none is partial
        print("sample.py: stopped by Ctrl-C; nothing was written", file=sys.stderr)
        raise SystemExit(130) from None


def run(args) -> dict:
    options, name = sampler_options(args)
    seed = _integer(args.seed, "--seed", 0)
    batch_size = _integer(args.batch_size, "--batch-size", 1)
    num = _integer(args.num, "--num", 1) if args.num is not None else None
    class_label = _integer(args.class_label, "--class-label", 0) if args.class_label else None
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise SampleError(f"--device: {error}") from None
    vae_path, fid_path = _existing_file(args.vae, "--vae"), _existing_file(args.fid, "--fid")
    if (args.fid or args.proxy_metrics) and not args.fid_data:
        raise SampleError(
            "--fid and --proxy-metrics need --fid-data (the reference images, e.g. the "
            "CIFAR-10 train set)"
        )
    if args.fid_data and not Path(args.fid_data).exists():
        raise SampleError(f"--fid-data {args.fid_data}: no such file or folder")
    checkpoint = Path(args.checkpoint)
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    if checkpoint.is_dir():
        checkpoint = checkpoint / CHECKPOINT_NAME
    evaluating = args.fid or args.proxy_metrics
    out = None if evaluating else _output_path(args, run_dir, name, seed)
    model, loaded = load_model(checkpoint, args.base, args.weights, device)
    trained = training_config(checkpoint)  # {} for a file no training run wrote
    _check_model(model, checkpoint, class_label, options)
    vae = None
    if vae_path:
        from twinflow_min.vae import SDVAEDecoder

        vae = SDVAEDecoder.from_file(vae_path, device=device)
    image_like = model.config.data_dim or vae is not None or model.config.in_channels in (1, 3)
    if out is not None and out.suffix == ".png" and not image_like:
        raise SampleError(
            f"these are {model.config.in_channels}-channel latents; pass --vae FILE to "
            f"decode them to images, or write .npy"
        )
    notes = sampler_notes(args, options)
    if options["cfg_scale"] > 0 and trained.get("twinflow_enabled") is True:
        notes.append(
            f"this model was trained with TwinFlow, which samples at guidance 0 (paper); "
            f"--cfg-scale {options['cfg_scale']:g} is applied anyway"
        )
    for text in notes:  # after every door check: a refused command prints one line only
        _note(text)
    sampler = Sampler(model, seed, device, options, class_label, vae)
    results: dict = {"checkpoint": str(checkpoint), "model": loaded, "sampler_name": name,
                     "sampler": options}
    if evaluating:
        results.update(evaluate_images(args, sampler, run_dir, device, num, batch_size, fid_path))
    else:
        num = num or 64
        batches = [
            sampler(min(batch_size, num - s))
            for s in tqdm(range(0, num, batch_size), desc="sampling", disable=None)
        ]
        write_output(out, torch.cat(batches), trained.get("dataset"), args.overwrite)
        results["num_samples"], results["out"] = num, str(out)
    print(json.dumps(results, indent=2, default=str))
    return results


def load_model(checkpoint: Path, base, weights: str, device: torch.device) -> tuple:
    """(model in eval mode, one line saying what was loaded) of a checkpoint: a LoRA checkpoint or
    adapter file on its base with the adapters merged (`load_adapter` + `merge_lora`), else
    `load_pretrained`."""
    if not is_adapter_file(checkpoint):
        if base is not None:
            raise SampleError(
                f"--base {base}: {checkpoint} is a whole model, not a LoRA checkpoint or adapter "
                f"file; drop --base"
            )
        model, info = load_pretrained(checkpoint, device=device, weights=weights)
        return model.eval(), str(info)
    _existing_file(base, "--base")
    model, info = load_adapter(checkpoint, base, weights=weights, device=device)
    settings = info.settings
    loaded = (f"LoRA {checkpoint} ({info.used} weights, {len(settings.layers)} layers, rank "
              f"{settings.rank}, alpha {settings.alpha:g}) on base {info.base_path}; "
              f"adapters merged")
    return merge_lora(model).eval(), loaded


def seeded_generators(seed: int, indices, device: torch.device) -> list[torch.Generator]:
    """One generator per sample index, seeded from (seed, index) via numpy's SeedSequence."""
    return [
        torch.Generator(device=device).manual_seed(
            int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        )
        for i in indices
    ]


class Sampler:
    """Draws samples [start, start + count) of a model: noise and sampler noise per sample."""

    def __init__(
        self, model, seed: int, device: torch.device, options: dict, class_label, vae=None
    ):
        self.model, self.seed, self.device, self.options, self.vae = (
            model,
            seed,
            device,
            options,
            vae,
        )
        config = model.config
        self.shape = (
            (config.data_dim,)
            if config.data_dim
            else (config.in_channels, config.input_size, config.input_size)
        )
        self.num_classes, self.class_label, self.next_index = config.num_classes, class_label, 0

    @torch.no_grad()
    def __call__(self, count: int, options: dict | None = None, start: int | None = None):
        start = self.next_index if start is None else start
        indices = range(start, start + count)
        self.next_index = start + count
        generators = seeded_generators(self.seed, indices, self.device)
        z = torch.stack(
            [torch.randn(self.shape, generator=g, device=self.device) for g in generators]
        )
        y = y_null = None
        if self.num_classes:
            y = torch.tensor(
                [
                    self.class_label if self.class_label is not None else i % self.num_classes
                    for i in indices
                ],
                device=self.device,
            )
            y_null = torch.full_like(y, self.num_classes)  # the null (CFG) class id
        keywords = dict(options or self.options)
        if not keywords.get("cfg_scale"):
            y_null = None
        x = ucgm_sample(self.model, z, y=y, y_null=y_null, generator=generators, **keywords)
        return self.vae.decode(x) if self.vae is not None else x


def write_output(path: Path, samples: torch.Tensor, dataset: str | None, overwrite: bool) -> None:
    if path.exists() and not overwrite:  # appeared while sampling
        raise SampleError(
            f"{path} appeared while sampling; pass --overwrite or choose another --out"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, samples.float().cpu().numpy())
    elif samples.dim() == 2:
        series = {"samples": samples.cpu()}
        if dataset and dataset.startswith("toy:"):
            reference = sample_toy(dataset[4:], samples.shape[0], torch.Generator().manual_seed(1))
            series = {"data": reference, **series}
        scatter_png(path, [(f"{samples.shape[0]} samples", series)], title=str(path.name))
    else:
        image_grid_png(
            path, samples.clamp(-1, 1).cpu(), nrow=int(np.ceil(np.sqrt(samples.shape[0])))
        )


def evaluate_images(args, sampler: Sampler, run_dir: Path, device, num, batch_size, fid_path):
    spec = "cifar10" if "cifar-10" in Path(args.fid_data).name else "folder"
    reference = load_dataset(spec, args.fid_data)[0]
    if fid_path:
        from twinflow_min.inception import load_inception

        inception = load_inception(fid_path, device=device)
        cache = Path(args.fid_cache) if args.fid_cache else run_dir / "fid_reference.npz"
        stats = metrics.reference_statistics(reference, inception, cache, device=device)
        num = num or metrics.FID_NUM_SAMPLES
        fid = metrics.fid_from_samples(
            sampler, stats, inception, num_samples=num, batch_size=batch_size, device=device
        )
        return {metrics.FID_KEY: fid, "num_samples": num}
    num = num or 2000
    starts = range(0, num, batch_size)
    one_step = torch.cat([sampler(min(batch_size, num - s), start=s) for s in starts])
    ode = torch.cat(
        [
            sampler(min(batch_size, num - s), options=dict(ODE_OPTIONS, **_plain()), start=s)
            for s in starts
        ]
    )
    return metrics.proxy_metrics(one_step, ode, torch.from_numpy(reference), device=device)


def _plain() -> dict:
    """The knobs the 50-step ODE reference leaves at their defaults (no guidance, order 1)."""
    return {key: KNOB_DEFAULTS[key] for key in ("order", "extrapolation_ratio", "cfg_scale")}


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on: main's one line
    main(sys.argv[1:])
