"""The pieces `train.py` wires together: data sources, model construction, run folders, logs.

Kept out of `train.py` so that script reads top to bottom as the algorithm (DiT `train.py` style,
convention 12). Nothing here is TwinFlow math: the losses live in `twinflow.py`, the sampler in
`sampler.py`.

Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, negative t is the fake branch.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

import torch
from torch import Tensor

from twinflow_min import evaluate
from twinflow_min.checkpoint import CheckpointError, load_pretrained
from twinflow_min.config import TrainConfig
from twinflow_min.data import ImageBatches, load_dataset, sample_toy
from twinflow_min.model import DiT, build_model
from twinflow_min.plots import scatter_png, trajectory_map_png


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: stop and say where, with every term, instead of training on NaN."""

    def __init__(self, step: int, terms: dict[str, float], last_checkpoint: Path | None):
        values = ", ".join(f"{name}={value:.6g}" for name, value in terms.items())
        where = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint is not None
                 else "no checkpoint was written before it")
        super().__init__(f"non-finite loss at step {step + 1} ({values}); {where}. Lower the learning rate "
                         f"or set max_grad_norm, then resume from that checkpoint with --resume")
        self.step, self.terms, self.last_checkpoint = step, terms, last_checkpoint


class SetupError(RuntimeError):
    """Data or model that cannot be set up (missing file, wrong format): reported as one line by train.py."""


class StopRequest:
    """Ctrl-C during training: finish the current step, write a checkpoint, exit cleanly (no lost work).

    A second Ctrl-C stops at once (KeyboardInterrupt). Only installed in the main thread.
    """

    def __init__(self):
        self.requested = False

    @contextlib.contextmanager
    def on_interrupt(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print("\nstopping after this step (Ctrl-C again to stop at once)", flush=True)

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def describe_terms(terms: dict[str, float]) -> str:
    """Short tqdm postfix: 'loss 0.123 base 0.1 adv 0.02 ...'."""
    return " ".join(f"{name.removeprefix('loss_') if name != 'loss' else 'loss'} {value:.4g}"
                    for name, value in terms.items())


def make_run_dir(cfg: TrainConfig) -> Path:
    """outputs/<run>; a fresh run never writes into a folder that already holds a checkpoint."""
    if cfg.resume:
        path = Path(cfg.resume)
        return path.parent if path.is_file() else path
    if cfg.run_name:
        name = cfg.run_name
    elif cfg.twinflow_image_free and cfg.pretrained_model_name_or_path:  # no dataset: name it after the model
        name = f"{Path(cfg.pretrained_model_name_or_path).stem}-image-free"
    else:
        name = cfg.dataset.replace(":", "-").replace("/", "_").replace("\\", "_")
    base = Path(cfg.output_dir) / name
    path, index = base, 1
    while path.exists() and any(path.iterdir()):
        index += 1
        path = base.with_name(f"{base.name}-{index}")
    path.mkdir(parents=True, exist_ok=True)
    return path


class TrajectoryLog:
    """(t, t_tgt) of the rows the network was trained on, for the trajectory map (issue #4).

    Both branches are kept: real rows t >= 0 and fake (adversarial) rows t < 0. At most `per_call`
    rows are kept per step, and the log is thinned uniformly once it holds more than `max_points`.
    """

    def __init__(self, per_call: int = 64, max_points: int = 40000):
        self.per_call, self.max_points = per_call, max_points
        self.t: list[Tensor] = []
        self.t_tgt: list[Tensor] = []
        self.count = 0

    def add(self, inputs: dict, options: dict) -> None:
        t, t_tgt = inputs["t"][: self.per_call], inputs["t_tgt"][: self.per_call]
        rows_t, rows_tgt = [t], [t_tgt]  # L_base rows (the large recipe's t already carries the adv rows' sign)
        if options.get("recipe", "tutorial") == "tutorial":
            if options.get("realvel_weight", 1.0) > 0:
                rows_t.append(t)  # L_realvel queries F(x_t, t, t) (reference §2.2)
                rows_tgt.append(t)
            if options.get("adversarial_enabled", True):
                one = t[:1]
                rows_t += [torch.ones_like(one), -t]  # F(z, 1, 0) and L_adv's F(x_fake_t, -t, -t) (§2.3-2.4)
                rows_tgt += [torch.zeros_like(one), -t]
        self.t.append(torch.cat(rows_t).float().cpu())
        self.t_tgt.append(torch.cat(rows_tgt).float().cpu())
        self.count += sum(r.numel() for r in rows_t)
        if self.count > self.max_points:
            t_all, tgt_all = torch.cat(self.t)[::2], torch.cat(self.t_tgt)[::2]
            self.t, self.t_tgt, self.count = [t_all], [tgt_all], t_all.numel()

    def write(self, path: Path) -> Path:
        return trajectory_map_png(path, torch.cat(self.t), torch.cat(self.t_tgt),
                                  title=f"(t, t_tgt) of the rows trained with gradient ({self.count} shown)")


# --------------------------------------------------------------------------------------------
# Data sources: each has next_batch(), generators, state_dict(), validate(), final_evaluation()
# --------------------------------------------------------------------------------------------

class ToyData:
    """Fresh 2-D samples every step from a dedicated generator (so the data order is resumable)."""

    def __init__(self, name: str, batch_size: int, seed: int, device: torch.device, eval_samples: int):
        self.name, self.batch_size, self.device, self.eval_samples = name, batch_size, device, eval_samples
        self.seed = seed
        self.generators = {"toy_data": torch.Generator().manual_seed(seed + 1)}
        sample_toy(name, 1, torch.Generator())  # fail early on an unknown name

    def next_batch(self) -> tuple[Tensor, None]:
        return sample_toy(self.name, self.batch_size, self.generators["toy_data"]).to(self.device), None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def validate(self, model, nfes, path: Path) -> None:
        z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(12345)).to(self.device)
        reference = sample_toy(self.name, 2000, torch.Generator().manual_seed(54321))
        panels = [(f"{nfe} NFE", {"data": reference, "samples": evaluate.generate(model, z, nfe).cpu()})
                  for nfe in nfes]
        scatter_png(path, panels, title=f"{self.name}: validation samples")

    def final_evaluation(self, model, nfes, run_dir: Path, cfg: TrainConfig) -> dict:
        # fixed evaluation draws: runs with different training seeds are scored on the same noise and data
        return evaluate.evaluate_toy(model, self.name, num=self.eval_samples, seed=evaluate.TOY_EVAL_SEED,
                                     device=self.device, out_dir=run_dir)


class TensorData:
    """Images (uint8, flipped) or pre-encoded latents (float) held in memory, exactly resumable."""

    def __init__(self, data, labels, batch_size: int, seed: int, device: torch.device, flip: bool,
                 num_classes: int, is_latent: bool):
        self.batches = ImageBatches(data, labels, batch_size, seed=seed, flip=flip, device=device)
        self.generators: dict[str, torch.Generator] = {}
        self.device, self.num_classes, self.is_latent = device, num_classes, is_latent
        self.sample_shape = tuple(data.shape[1:])

    def next_batch(self) -> tuple[Tensor, Tensor]:
        return next(self.batches)

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)

    def _fixed_inputs(self, n: int = 10) -> tuple[Tensor, Tensor | None]:
        z = torch.randn(n, *self.sample_shape, generator=torch.Generator().manual_seed(12345)).to(self.device)
        y = None if self.num_classes == 0 else (torch.arange(n) % self.num_classes).to(self.device)
        return z, y

    def validate(self, model, nfes, path: Path) -> None:
        if self.is_latent:
            return  # latents need the VAE decoder: sample.py --vae writes the pictures
        z, y = self._fixed_inputs()
        evaluate.validation_grid(model, z, y, nfes, path)

    def final_evaluation(self, model, nfes, run_dir: Path, cfg: TrainConfig) -> dict:
        if not self.is_latent:
            z, y = self._fixed_inputs()
            evaluate.validation_grid(model, z, y, nfes, run_dir / "samples_grid.png")
        return {}


class ImageFreeData(TensorData):
    """The official image-free mode: only class labels; x is replaced by the model's own 1-step samples."""

    def __init__(self, sample_shape, batch_size: int, num_classes: int, seed: int, device: torch.device):
        self.generators = {"labels": torch.Generator().manual_seed(seed + 1)}
        self.sample_shape, self.batch_size, self.num_classes = tuple(sample_shape), batch_size, num_classes
        self.device, self.is_latent = device, True

    def next_batch(self) -> tuple[Tensor, Tensor | None]:
        x = torch.zeros(self.batch_size, *self.sample_shape, device=self.device)  # replaced by image_free_batch
        if self.num_classes == 0:
            return x, None
        y = torch.randint(self.num_classes, (self.batch_size,), generator=self.generators["labels"])
        return x, y.to(self.device)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_data_and_model(cfg: TrainConfig, device: torch.device):
    """(data source, model) for the configured dataset / pretrained file / image-free mode."""
    try:
        return _build_data_and_model(cfg, device)
    except (ValueError, OSError, CheckpointError) as error:
        raise SetupError(str(error)) from error


def _build_data_and_model(cfg: TrainConfig, device: torch.device):
    model: DiT | None = None
    if cfg.pretrained_model_name_or_path:
        model, info = load_pretrained(cfg.pretrained_model_name_or_path,
                                      gradient_checkpointing=cfg.gradient_checkpointing)
        print(f"loaded pretrained weights: {info}")
    if cfg.twinflow_image_free:
        if model is None:
            raise ValueError("twinflow_image_free trains on the model's own samples: give a pretrained model "
                             "with --pretrained FILE.safetensors")
        c = model.config
        data = ImageFreeData((c.in_channels, c.input_size, c.input_size), cfg.train_batch_size, c.num_classes,
                             cfg.seed, device)
        return data, model  # the dataset key is not used: only class labels are drawn
    if cfg.dataset.startswith("toy:"):
        if model is not None and not model.config.data_dim:
            raise ValueError(f"the pretrained model takes images but dataset {cfg.dataset!r} is 2-D points; give "
                             f"--dataset latents:PATH or --image-free")
        data = ToyData(cfg.dataset.split(":", 1)[1], cfg.train_batch_size, cfg.seed, device, cfg.eval_samples)
        model = model or build_model(cfg.model, gradient_checkpointing=cfg.gradient_checkpointing)
        return data, model
    images, labels, class_names = load_dataset(cfg.dataset, cfg.data)
    is_latent = cfg.dataset.startswith("latents")
    num_classes = len(class_names) if class_names else int(labels.max()) + 1
    if model is None:
        shape = tuple(images.shape[1:])
        model = build_model(cfg.model, in_channels=shape[0], input_size=shape[1], num_classes=num_classes,
                            gradient_checkpointing=cfg.gradient_checkpointing)
    data = TensorData(images, labels, cfg.train_batch_size, cfg.seed, device, flip=not is_latent,
                      num_classes=model.config.num_classes, is_latent=is_latent)
    return data, model
