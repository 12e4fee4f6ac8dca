"""Sample from a TwinFlow checkpoint with the UCGM sampler (1, 2, 4 NFE or any grid), and evaluate it.

Paper: TwinFlow (arXiv:2512.05150) samples at guidance 0 with the UCGM sampler (official `inference.py`;
reference §3.2). The model is rebuilt from the file alone (its config travels in the safetensors metadata).

Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data, negative t is the fake branch.

    python sample.py outputs/toy-moons --nfe 1 --num 4000 --out samples.npy
    python sample.py outputs/cifar10 --nfe 2 --num 64 --out grid.png
    python sample.py outputs/cifar10 --fid pt_inception-2015-12-05-6726825d.pth --fid-data cifar-10-python.tar.gz
    python sample.py outputs/cifar10 --proxy-metrics --fid-data cifar-10-python.tar.gz --num 2000
    python sample.py sit-xl-finetuned.safetensors --nfe 1 --num 16 --vae sd-vae-ft-ema.safetensors --out grid.png

Sample i depends only on (--seed, i): its noise and its sampler noise come from a generator of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from twinflow_min import metrics
from twinflow_min.checkpoint import CheckpointError, load_pretrained
from twinflow_min.data import load_dataset, sample_toy
from twinflow_min.evaluate import ODE_OPTIONS
from twinflow_min.plots import image_grid_png, scatter_png
from twinflow_min.sampler import preset_for_nfe, ucgm_sample
from twinflow_min.train_state import CHECKPOINT_NAME


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a run directory, its checkpoint.safetensors, or a converted pretrained "
                                           ".safetensors file")
    parser.add_argument("--nfe", type=int, default=1, help="network evaluations: 1, 2, 4 use the official presets; "
                                                           "other n a few-step grid (default 1)")
    parser.add_argument("--ode", action="store_true", help="ignore --nfe and run the 50-step ODE (mul style)")
    parser.add_argument("--style", choices=("few", "any", "mul"), help="override the preset's sampling style")
    parser.add_argument("--stochastic-ratio", help="override the preset's re-noising ratio: a number in [0, 1] "
                                                   "or SDE")
    parser.add_argument("--num", type=int, default=None, help="number of samples (default 64; 50000 with --fid)")
    parser.add_argument("--batch-size", type=int, default=500, help="samples per model call (default 500)")
    parser.add_argument("--out", help="output file: .npy (raw samples, float32) or .png (scatter / image grid); "
                                      "default <run>/samples_nfe<N>.png")
    parser.add_argument("--seed", type=int, default=0, help="sample i depends only on (seed, i) (default 0)")
    parser.add_argument("--weights", choices=("auto", "ema", "model"), default="auto",
                        help="which weights of a training checkpoint (auto = EMA when present)")
    parser.add_argument("--class-label", type=int, default=None,
                        help="class of every sample (default: sample i gets class i mod num_classes)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ... (default auto)")
    parser.add_argument("--vae", help="SD-VAE (diffusers layout) .safetensors: decode latents to images")
    parser.add_argument("--fid", metavar="INCEPTION_WEIGHTS",
                        help="pytorch-fid weights (pt_inception-2015-12-05-6726825d.pth or .safetensors): report "
                             "FID against --fid-data")
    parser.add_argument("--proxy-metrics", action="store_true",
                        help="no Inception weights: random-feature Frechet distance to --fid-data and the gap "
                             "between 1-NFE and 50-step samples (never called FID)")
    parser.add_argument("--fid-data", help="reference images: CIFAR-10 archive/folder or a class-folder dataset")
    parser.add_argument("--fid-cache", help="cache of the reference statistics (default <run>/fid_reference.npz)")
    return parser


def seeded_generators(seed: int, indices, device: torch.device) -> list[torch.Generator]:
    """One generator per sample index, seeded from (seed, index) through numpy's SeedSequence (no collisions)."""
    return [torch.Generator(device=device).manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
            for i in indices]


def sampler_keywords(args) -> dict:
    options = dict(ODE_OPTIONS) if args.ode else preset_for_nfe(args.nfe)
    if args.style:
        options["style"] = args.style
    if args.stochastic_ratio is not None:
        options["stochastic_ratio"] = args.stochastic_ratio if args.stochastic_ratio == "SDE" \
            else float(args.stochastic_ratio)
    return options


class Sampler:
    """Draws samples [start, start + count) of a model: noise and sampler noise from per-sample generators."""

    def __init__(self, model, seed: int, device: torch.device, options: dict, class_label: int | None, vae=None):
        self.model, self.seed, self.device, self.options, self.vae = model, seed, device, options, vae
        config = model.config
        self.shape = (config.data_dim,) if config.data_dim else (config.in_channels, config.input_size,
                                                                 config.input_size)
        self.num_classes, self.class_label, self.next_index = config.num_classes, class_label, 0

    @torch.no_grad()
    def __call__(self, count: int, options: dict | None = None, start: int | None = None) -> torch.Tensor:
        start = self.next_index if start is None else start
        indices = range(start, start + count)
        self.next_index = start + count
        generators = seeded_generators(self.seed, indices, self.device)
        z = torch.stack([torch.randn(self.shape, generator=g, device=self.device) for g in generators])
        y = None
        if self.num_classes:
            y = torch.tensor([self.class_label if self.class_label is not None else i % self.num_classes
                              for i in indices], device=self.device)
        x = ucgm_sample(self.model, z, y=y, generator=generators, **(options or self.options))
        return self.vae.decode(x) if self.vae is not None else x


def write_output(path: Path, samples: torch.Tensor, model, dataset: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, samples.float().cpu().numpy())
    elif path.suffix == ".png":
        if samples.dim() == 2:
            series = {"samples": samples.cpu()}
            if dataset and dataset.startswith("toy:"):
                series = {"data": sample_toy(dataset[4:], samples.shape[0], torch.Generator().manual_seed(1)),
                          **series}
            scatter_png(path, [(f"{samples.shape[0]} samples", series)], title=str(path.name))
        elif samples.shape[1] in (1, 3):
            image_grid_png(path, samples.clamp(-1, 1).cpu(), nrow=int(np.ceil(np.sqrt(samples.shape[0]))))
        else:
            raise SystemExit(f"sample.py: error: these are {samples.shape[1]}-channel latents; pass --vae FILE to "
                             f"decode them to images, or write .npy")
    else:
        raise SystemExit(f"sample.py: error: --out must end in .npy or .png, got {path}")
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    checkpoint = Path(args.checkpoint)
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    if checkpoint.is_dir():
        checkpoint = checkpoint / CHECKPOINT_NAME
    try:
        model, info = load_pretrained(checkpoint, device=device, weights=args.weights)
    except CheckpointError as error:
        raise SystemExit(f"sample.py: error: {error}") from None
    model.eval()
    print(f"loaded {info}")
    dataset = _training_dataset(checkpoint)
    vae = None
    if args.vae:
        from twinflow_min.vae import SDVAEDecoder
        vae = SDVAEDecoder.from_file(args.vae, device=device)
    sampler = Sampler(model, args.seed, device, sampler_keywords(args), args.class_label, vae)
    results: dict = {"checkpoint": str(checkpoint), "sampler": sampler.options}

    if args.fid or args.proxy_metrics:
        results.update(evaluate_images(args, sampler, run_dir, device))
    else:
        num = args.num or 64
        batches = [sampler(min(args.batch_size, num - s)) for s in
                   tqdm(range(0, num, args.batch_size), desc="sampling", disable=None)]
        samples = torch.cat(batches)
        name = "ode50" if args.ode else f"nfe{args.nfe}"
        write_output(Path(args.out) if args.out else run_dir / f"samples_{name}.png", samples, model, dataset)
        results["num_samples"] = num
    print(json.dumps(results, indent=2, default=str))
    return results


def _training_dataset(checkpoint: Path) -> str | None:
    """The dataset string of a twinflow-min training checkpoint (for the toy scatter's reference points)."""
    summary = checkpoint.parent / "checkpoint.json"
    if summary.is_file():
        return json.loads(summary.read_text()).get("train_config", {}).get("dataset")
    return None


def evaluate_images(args, sampler: Sampler, run_dir: Path, device: torch.device) -> dict:
    if not args.fid_data:
        raise SystemExit("sample.py: error: --fid and --proxy-metrics need --fid-data (the reference images, "
                         "e.g. the CIFAR-10 train set)")
    spec = "cifar10" if "cifar-10" in Path(args.fid_data).name else "folder"
    reference = load_dataset(spec, args.fid_data)[0]
    if args.fid:
        from twinflow_min.inception import load_inception
        inception = load_inception(args.fid, device=device)
        cache = Path(args.fid_cache) if args.fid_cache else run_dir / "fid_reference.npz"
        stats = metrics.reference_statistics(reference, inception, cache, device=device)
        num = args.num or metrics.FID_NUM_SAMPLES
        fid = metrics.fid_from_samples(sampler, stats, inception, num_samples=num, batch_size=args.batch_size,
                                       device=device)
        return {metrics.FID_KEY: fid, "num_samples": num}
    num = args.num or 2000
    one_step = torch.cat([sampler(min(args.batch_size, num - s), start=s) for s in range(0, num, args.batch_size)])
    ode = torch.cat([sampler(min(args.batch_size, num - s), options=dict(ODE_OPTIONS), start=s)
                     for s in range(0, num, args.batch_size)])
    return metrics.proxy_metrics(one_step, ode, torch.from_numpy(reference), device=device)


if __name__ == "__main__":
    main(sys.argv[1:])
