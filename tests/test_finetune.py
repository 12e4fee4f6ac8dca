"""Fine-tuning a pretrained file end to end (issue #6) and image evaluation in sample.py (issue #5).

A tiny SiT in the released key layout is converted with tools/convert_checkpoint.py, fine-tuned with
TwinFlow image-free and on pre-encoded latents, then sampled by sample.py and decoded by a tiny
SD-VAE decoder. Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, negative t is the fake
branch.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import sample
import train
from test_checkpoint import HEADS, TOOL_PATH, tiny_state
from test_train import image_folder
from test_vae import random_state_dict
from twinflow_min.checkpoint import load_pretrained
from twinflow_min.inception import InceptionV3FID
from twinflow_min.vae import VAEDecoderConfig


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A converted tiny SiT (SiT convention, learned sigma, 4x8x8 latents, 10 classes)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("convert_checkpoint", TOOL_PATH)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    folder = tmp_path_factory.mktemp("pretrained")
    source, out = folder / "sit.pt", folder / "sit.safetensors"
    torch.save({"ema": tiny_state(learn_sigma=True, seed=1)}, source)
    assert tool.main([str(source), str(out), "--convention", "sit", "--num-heads", str(HEADS)]) == 0
    return out


def test_image_free_finetune_then_sample_with_vae(pretrained, tmp_path, capsys):
    summary = train.main(["--pretrained", str(pretrained), "--image-free", "--max_train_steps", "3",
                          "--batch-size", "4", "--validation_every", "0",
                          "--output_dir", str(tmp_path)])
    # named after the model file
    assert Path(summary["run_dir"]).name == f"{pretrained.stem}-image-free"
    state_model, info = load_pretrained(summary["checkpoint"], weights="model")
    # the file's convention is kept
    assert info.config.time_convention == "sit" and info.config.learn_sigma
    original, _ = load_pretrained(pretrained)
    trained = state_model.state_dict()
    changed = [k for k, v in original.state_dict().items() if not torch.equal(v, trained[k])]
    assert changed, "three optimizer steps changed nothing"
    vae_path = tmp_path / "vae.safetensors"
    config = VAEDecoderConfig(latent_channels=4, block_out_channels=(32, 32), layers_per_block=1)
    save_file({k: v.float() for k, v in random_state_dict(config).items()}, str(vae_path))
    png, npy = tmp_path / "grid.png", tmp_path / "latents.npy"
    sample.main([summary["run_dir"], "--nfe", "1", "--num", "4", "--vae", str(vae_path), "--out",
                 str(png)])
    assert Image.open(png).size[0] >= 2 * 16  # 4 images of 16x16 (8x8 latents, one upsampling)
    sample.main([summary["run_dir"], "--nfe", "2", "--num", "3", "--out", str(npy)])
    assert np.load(npy).shape == (3, 4, 8, 8)
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        sample.main([summary["run_dir"], "--num", "2", "--out", str(tmp_path / "raw.png")])
    assert refused.value.code == 2 and "--vae" in capsys.readouterr().err


def test_finetune_on_latents_file(pretrained, tmp_path):
    latents = tmp_path / "latents.safetensors"
    generator = torch.Generator().manual_seed(0)
    save_file({"latents": torch.randn(12, 4, 8, 8, generator=generator),
               "labels": torch.arange(12) % 10}, str(latents))
    summary = train.main(["--pretrained", str(pretrained), "--dataset", f"latents:{latents}",
                          "--max_train_steps", "2", "--batch-size", "4", "--validation_every", "1",
                          "--output_dir", str(tmp_path)])
    assert summary["step"] == 2
    lines = (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 2


def test_sample_py_fid_and_proxy_metrics(tmp_path):
    data = image_folder(tmp_path / "data", per_class=5, size=8)
    summary = train.main(["--dataset", "folder", "--data", str(data), "--model", "CIFAR-T/2",
                          "--max_train_steps", "1", "--batch-size", "4", "--validation_every",
                          "0", "--output_dir", str(tmp_path)])
    proxy = sample.main([summary["run_dir"], "--proxy-metrics", "--fid-data", str(data), "--num",
                         "6"])
    assert {"fd_random_features", "gap_1nfe_vs_50step_mse"} <= set(proxy) and "fid" not in proxy
    assert np.isfinite(proxy["fd_random_features"]) and proxy["gap_1nfe_vs_50step_mse"] >= 0
    weights = tmp_path / "inception.pth"
    torch.manual_seed(0)
    torch.save(InceptionV3FID().state_dict(), weights)  # random weights with pytorch-fid's names
    cache = tmp_path / "reference.npz"
    fid = sample.main([summary["run_dir"], "--fid", str(weights), "--fid-data", str(data), "--num",
                       "4",
                       "--fid-cache", str(cache)])
    assert np.isfinite(fid["fid"]) and fid["num_samples"] == 4 and cache.is_file()
