"""What `train.py` trains on: data sources, the model built or loaded for them, fit checks.

Every data source has next_batch(), generators (its named torch.Generators, checkpointed),
state_dict() / load_state_dict() (its position, checkpointed), validate() and final_evaluation().
`build_data_and_model` returns (data, model) for the configured dataset, pretrained file or
image-free mode, and refuses, in one line naming both shapes, data that does not fit the model.
`check_prediction_type` and `check_resume_fits` compare the model with the config and with the
checkpoint a resume continues. Time convention: see twinflow_min/transport.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from twinflow_min import evaluate
from twinflow_min.checkpoint import load_pretrained
from twinflow_min.checks import CheckpointError
from twinflow_min.data import ImageBatches, load_dataset, sample_toy
from twinflow_min.model import DiT, build_model
from twinflow_min.plots import scatter_png


class SetupError(RuntimeError):
    """Data or model that cannot be set up (missing file, wrong format): one line from train.py."""


def sample_shape(config) -> tuple[int, ...]:
    """One sample's shape for a DiTConfig: (data_dim,) or (in_channels, input_size, input_size)."""
    if config.data_dim:
        return (config.data_dim,)
    return (config.in_channels, config.input_size, config.input_size)


def _shape_text(shape) -> str:
    return "x".join(str(size) for size in shape)


class ToyData:
    """Fresh 2-D samples every step from a dedicated generator (so the data order is resumable)."""

    def __init__(self, name: str, batch_size: int, seed: int, device: torch.device,
                 eval_samples: int):
        self.name, self.batch_size, self.device = name, batch_size, device
        self.seed, self.eval_samples = seed, eval_samples
        self.generators = {"toy_data": torch.Generator().manual_seed(seed + 1)}
        self.sample_shape = (2,)
        sample_toy(name, 1, torch.Generator())  # fail early on an unknown name

    def next_batch(self) -> tuple[Tensor, None]:
        x = sample_toy(self.name, self.batch_size, self.generators["toy_data"])  # (B, 2)
        return x.to(self.device), None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def validate(self, model, nfes, path: Path) -> None:
        z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(12345)).to(self.device)
        reference = sample_toy(self.name, 2000, torch.Generator().manual_seed(54321))
        panels = []
        for nfe in nfes:  # the 2- and 4-NFE presets re-noise: fixed sampler noise per panel
            noise = torch.Generator(device=self.device).manual_seed(23456)
            samples = evaluate.generate(model, z, nfe, generator=noise).cpu()
            panels.append((f"{nfe} NFE", {"data": reference, "samples": samples}))
        scatter_png(path, panels, title=f"{self.name}: validation samples")

    def final_evaluation(self, model, nfes, run_dir: Path) -> dict:
        # fixed evaluation draws: runs with different training seeds are scored on the same noise
        # and data
        return evaluate.evaluate_toy(model, self.name, num=self.eval_samples,
                                     seed=evaluate.TOY_EVAL_SEED, device=self.device,
                                     out_dir=run_dir)


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
        generator = torch.Generator().manual_seed(12345)
        z = torch.randn(n, *self.sample_shape, generator=generator).to(self.device)
        y = None if self.num_classes == 0 else (torch.arange(n) % self.num_classes).to(self.device)
        return z, y

    def validate(self, model, nfes, path: Path) -> None:
        if self.is_latent:
            return  # latents need the VAE decoder: sample.py --vae writes the pictures
        z, y = self._fixed_inputs()
        evaluate.validation_grid(model, z, y, nfes, path)

    def final_evaluation(self, model, nfes, run_dir: Path) -> dict:
        if not self.is_latent:
            z, y = self._fixed_inputs()
            evaluate.validation_grid(model, z, y, nfes, run_dir / "samples_grid.png")
        return {}


class ImageFreeData(TensorData):
    """The official image-free mode: only class labels; x becomes the model's own 1-step samples."""

    def __init__(self, sample_shape, batch_size: int, num_classes: int, seed: int,
                 device: torch.device):
        self.generators = {"labels": torch.Generator().manual_seed(seed + 1)}
        self.sample_shape, self.batch_size = tuple(sample_shape), batch_size
        self.num_classes, self.device, self.is_latent = num_classes, device, True

    def next_batch(self) -> tuple[Tensor, Tensor | None]:
        # x is replaced by image_free_batch in the loop; only its shape matters here
        x = torch.zeros(self.batch_size, *self.sample_shape, device=self.device)
        if self.num_classes == 0:
            return x, None
        y = torch.randint(self.num_classes, (self.batch_size,), generator=self.generators["labels"])
        return x, y.to(self.device)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_data_and_model(cfg, device: torch.device):
    """(data source, model) for the configured dataset / pretrained file / image-free mode.

    Raises SetupError (one line) for files that cannot be read and for data that does not fit the
    model.
    """
    try:
        return _build_data_and_model(cfg, device)
    except (ValueError, OSError, CheckpointError) as error:
        raise SetupError(str(error)) from error


def _load_model(cfg) -> DiT | None:
    if not cfg.pretrained_model_name_or_path:
        return None
    model, info = load_pretrained(cfg.pretrained_model_name_or_path,
                                  gradient_checkpointing=cfg.gradient_checkpointing)
    print(f"loaded pretrained weights: {info}")
    return model


def _build_data_and_model(cfg, device: torch.device):
    model = _load_model(cfg)
    if cfg.twinflow_image_free:
        if model is None:
            raise ValueError("twinflow_image_free trains on the model's own samples: give a "
                             "pretrained model with --pretrained FILE.safetensors")
        c = model.config
        data = ImageFreeData(sample_shape(c), cfg.train_batch_size, c.num_classes, cfg.seed, device)
        return data, model  # the dataset key is not used: only class labels are drawn
    if cfg.dataset.startswith("toy:"):
        if model is not None and not model.config.data_dim:
            raise ValueError(f"the pretrained model takes images but dataset {cfg.dataset!r} is "
                             f"2-D points; give --dataset latents:PATH or --image-free")
        data = ToyData(cfg.dataset[4:], cfg.train_batch_size, cfg.seed, device, cfg.eval_samples)
        model = model or build_model(cfg.model, gradient_checkpointing=cfg.gradient_checkpointing)
        return data, model
    images, labels, class_names = load_dataset(cfg.dataset, cfg.data,
                                               check_md5=cfg.data_check_md5)
    is_latent = cfg.dataset.startswith("latents")
    num_classes = len(class_names) if class_names else int(labels.max()) + 1
    shape = tuple(images.shape[1:])
    if model is None:
        model = build_model(cfg.model, in_channels=shape[0], input_size=shape[1],
                            num_classes=num_classes,
                            gradient_checkpointing=cfg.gradient_checkpointing)
    check_data_fits(model.config, shape, num_classes, "the pretrained model")
    data = TensorData(images, labels, cfg.train_batch_size, cfg.seed, device, flip=not is_latent,
                      num_classes=model.config.num_classes, is_latent=is_latent)
    return data, model


def check_data_fits(config, shape: tuple[int, ...], num_classes: int, model_name: str) -> None:
    """ValueError naming both shapes when samples of `shape` (or `num_classes` classes) misfit."""
    wanted = sample_shape(config)
    if tuple(shape) != wanted:
        raise ValueError(f"the data's samples are {_shape_text(shape)} but {model_name} takes "
                         f"{_shape_text(wanted)} (channels x height x width); give data of that "
                         f"size or a model made for it")
    if num_classes > max(config.num_classes, 1):
        raise ValueError(f"the data has {num_classes} classes but {model_name} knows "
                         f"{config.num_classes}; give data with at most that many classes")


PREDICTION_NAMES = {"flow": "flow_matching", "epsilon": "epsilon", "v_prediction": "v_prediction"}


def check_prediction_type(cfg, model) -> None:
    """SetupError unless the model's own prediction type (from its file) agrees with the config.

    A diffusion file (epsilon / v) needs prediction_type set to it and diff2flow_enabled, plus
    twinflow_allow_diff2flow with TwinFlow (the same opt-in as the config key); a flow model is
    refused with a diffusion prediction_type (docs/math.md#diffusion-bridge).
    """
    source = cfg.pretrained_model_name_or_path or "the model built from the config"
    file_type = PREDICTION_NAMES.get(model.config.prediction_type, model.config.prediction_type)
    if file_type == "flow_matching" and cfg.prediction_type != "flow_matching":
        raise SetupError(f"prediction_type = {cfg.prediction_type!r}, but {source} predicts flow "
                         f"velocities; drop --prediction_type (flow_matching is the default)")
    if file_type == "flow_matching":
        return
    flags = f"--prediction_type {file_type} --diff2flow_enabled true"
    if cfg.twinflow_enabled:
        flags += " --twinflow_allow_diff2flow true"
    agree = cfg.prediction_type == file_type
    agree = agree and cfg.diff2flow_enabled
    agree = agree and (cfg.twinflow_allow_diff2flow or not cfg.twinflow_enabled)
    if not agree:
        raise SetupError(f"{source} is a diffusion model ({file_type} prediction) but the config "
                         f"says prediction_type = {cfg.prediction_type!r}, diff2flow_enabled = "
                         f"{cfg.diff2flow_enabled}, twinflow_allow_diff2flow = "
                         f"{cfg.twinflow_allow_diff2flow}: to train it through the "
                         f"diffusion-to-flow bridge set {flags}")


ARCHITECTURE_FIELDS = ("data_dim", "in_channels", "input_size", "patch_size", "hidden_size",
                       "depth", "num_heads", "num_classes", "learn_sigma")


def check_resume_fits(checkpoint_path, saved_config, model, data_shape) -> None:
    """SetupError naming both shapes when this run's model differs from the checkpoint's."""
    here = model.config
    differ = [name for name in ARCHITECTURE_FIELDS
              if getattr(saved_config, name) != getattr(here, name)]
    if not differ:
        return
    there_text = ", ".join(f"{name} {getattr(saved_config, name)}" for name in differ)
    here_text = ", ".join(f"{name} {getattr(here, name)}" for name in differ)
    raise SetupError(f"--resume {checkpoint_path}: the checkpoint's model takes "
                     f"{_shape_text(sample_shape(saved_config))} samples ({there_text}) but this "
                     f"run's data ({_shape_text(data_shape)}) and config build one with "
                     f"{here_text}; resume with the run's own data and model settings")
