"""Tests for twinflow_min/inception.py: the FID Inception-v3 layout, its pytorch-fid patches,
loading, preprocessing.

No real weights here: a random state dict with the pytorch-fid key names is saved in tmp_path (.pth
and .safetensors) and loaded strictly. Key names and counts below are written from torchvision's
`Inception3` layout and pytorch-fid's `fid_inception_v3` (no AuxLogits, fc 1008 x 2048), not read
from the module.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from twinflow_min.inception import (
    InceptionV3FID,
    InceptionWeightsError,
    images_to_unit_range,
    inception_state_dict_names,
    load_inception,
)

BN_EPS = 1e-3  # torchvision BasicConv2d BatchNorm eps
# BasicConv2d count, by block (torchvision inception.py): stem 5; InceptionA 7 (x3); InceptionB 4;
# InceptionC 10 (x4); InceptionD 6; InceptionE 9 (x2)  ->  5 + 21 + 4 + 40 + 6 + 18 = 94.
NUM_BASIC_CONVS = 5 + 3 * 7 + 4 + 4 * 10 + 6 + 2 * 9
# Each BasicConv2d: conv.weight + bn.{weight, bias, running_mean, running_var} (+
# bn.num_batches_tracked); fc: 2.
NUM_REQUIRED_KEYS = NUM_BASIC_CONVS * 5 + 2  # 472
NUM_KEYS_WITH_COUNTERS = NUM_BASIC_CONVS * 6 + 2  # 566
REPRESENTATIVE_KEYS = {  # name -> shape, from torchvision Inception3 / pytorch-fid FID patches
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7c.branch3x3dbl_3b.bn.weight": (384,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


def random_state_dict(seed: int = 0, dtype=torch.float32) -> dict:
    """Random weights with the model's names/shapes: He-normal convs and sane BatchNorm
    statistics."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    with torch.device("meta"):
        layout = InceptionV3FID().state_dict()
    for name, tensor in layout.items():
        if name.endswith("num_batches_tracked"):
            continue  # like a file that never stored the counters
        if name.endswith("conv.weight"):
            value = torch.randn(tensor.shape, generator=generator) * math.sqrt(
                2 / tensor[0].numel()
            )
        elif name.endswith(("running_var", "bn.weight")):
            value = 0.5 + torch.rand(tensor.shape, generator=generator)
        else:
            value = 0.1 * torch.randn(tensor.shape, generator=generator)
        state[name] = value.to(dtype)
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inception")
    state = random_state_dict()
    torch.save(state, folder / "pt_inception.pth")
    save_file(state, str(folder / "pt_inception.safetensors"))
    return folder, state


def test_state_dict_names_follow_torchvision_layout():
    names = inception_state_dict_names()
    assert len(names) == NUM_KEYS_WITH_COUNTERS
    assert len(inception_state_dict_names(include_batch_counters=False)) == NUM_REQUIRED_KEYS
    assert not any(name.startswith("AuxLogits") for name in names)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in InceptionV3FID().state_dict().items()}
    for name, shape in REPRESENTATIVE_KEYS.items():
        assert shapes[name] == shape, name
    assert not any(".bias" in k for k in names if ".conv." in k)  # BasicConv2d convs have no bias


def test_load_pth_and_safetensors_strict_and_forward(weights):
    folder, state = weights
    # the brief's contract: a plain strict load_state_dict of the .pth works
    InceptionV3FID().load_state_dict(
        torch.load(folder / "pt_inception.pth", weights_only=True), strict=True
    )
    from_pth = load_inception(folder / "pt_inception.pth")
    from_safetensors = load_inception(folder / "pt_inception.safetensors")
    assert torch.equal(
        from_pth.Mixed_6c.branch7x7_2.conv.weight, state["Mixed_6c.branch7x7_2.conv.weight"]
    )
    assert not from_pth.training and not any(p.requires_grad for p in from_pth.parameters())
    images = torch.randint(
        0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )
    features = from_pth(images)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    assert features.std() > 0  # random He-scaled weights keep activations alive
    # one 299-px forward is ~0.5 s on 2 cores: compare the safetensors copy by its weights, not a
    # second forward
    pth_tensors = from_pth.state_dict()
    for name, tensor in from_safetensors.state_dict().items():
        assert torch.equal(tensor, pth_tensors[name]), name
    # filled in: file had none
    assert from_safetensors.Mixed_7c.branch_pool.bn.num_batches_tracked.item() == 0


def test_missing_unexpected_and_misshaped_keys_raise_clear_errors(weights, tmp_path):
    _, state = weights
    half = {k: v.half() for k, v in state.items()}
    save_file(half, str(tmp_path / "half.safetensors"))
    # half copy -> float32
    assert load_inception(tmp_path / "half.safetensors").fc.weight.dtype == torch.float32
    broken = {k: v for k, v in half.items() if k != "Mixed_5c.branch1x1.bn.running_mean"}
    save_file(broken, str(tmp_path / "missing.safetensors"))
    with pytest.raises(
        InceptionWeightsError, match=r"missing keys \[Mixed_5c\.branch1x1\.bn\.running_mean\]"
    ):
        load_inception(tmp_path / "missing.safetensors")
    extra = half | {"AuxLogits.fc.weight": torch.zeros(1008, 768).half()}
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(InceptionWeightsError, match=r"unexpected keys \[AuxLogits\.fc\.weight\]"):
        load_inception(tmp_path / "extra.safetensors")
    wrong = half | {"fc.weight": torch.zeros(1000, 2048).half()}
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(
        InceptionWeightsError, match=r"fc\.weight: file \(1000, 2048\) vs model \(1008, 2048\)"
    ):
        load_inception(tmp_path / "wrong.safetensors")
    with pytest.raises(FileNotFoundError, match="pt_inception"):
        load_inception(tmp_path / "absent.pth")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported weight file"):
        load_inception(tmp_path / "weights.bin")


def _identity_pool_branch(block, in_channels: int, out_channels: int) -> None:
    """Zero every conv, make branch_pool copy input channel i to output i (BatchNorm left at
    identity stats)."""
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.zero_()
        block.branch_pool.conv.weight[:, :, 0, 0] = torch.eye(out_channels, in_channels)


@pytest.mark.parametrize(
    "block_name, in_channels, pool_channels, pool",
    [
        ("Mixed_5b", 192, 32, "avg"),
        ("Mixed_6b", 768, 192, "avg"),
        ("Mixed_7b", 1280, 192, "avg"),
        ("Mixed_7c", 2048, 192, "max"),
    ],
)
def test_pool_branch_patches(block_name, in_channels, pool_channels, pool):
    """pytorch-fid: avg-pool ignores the padding (count_include_pad=False) in A/C/E_1, max-pool in
    E_2."""
    block = getattr(InceptionV3FID(), block_name).eval()
    _identity_pool_branch(block, in_channels, pool_channels)
    x = torch.rand(
        1, in_channels, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float32
    )
    out = block(x)[:, -pool_channels:]  # the pool branch is the last one in torch.cat
    window = (
        F.pad(x[:, :pool_channels], (1, 1, 1, 1), value=float("nan"))
        .unfold(2, 3, 1)
        .unfold(3, 3, 1)
    )
    # reference: pool over the 3x3 neighbourhood of real pixels only (NaN = padding, excluded)
    if pool == "max":
        expected = torch.nan_to_num(window, nan=-1.0).amax(dim=(-2, -1))
    else:
        expected = torch.nanmean(window.flatten(-2), dim=-1)
    # BatchNorm at init: running mean 0, var 1, weight 1, bias 0  ->  y = x / sqrt(1 + eps); ReLU
    #     keeps x >= 0
    torch.testing.assert_close(out, expected / math.sqrt(1 + BN_EPS), atol=1e-6, rtol=1e-5)
    # a corner with zero-padding counted would be 4/9 of the mean: make sure that is not what we got
    assert not torch.allclose(
        out[..., 0, 0],
        window[..., 0, 0, :, :].nan_to_num(0).sum((-2, -1)) / 9 / math.sqrt(1 + BN_EPS),
        atol=1e-4,
    )


def test_preprocess_matches_pytorch_fid_scaling():
    # at 299 px the bilinear resize is the identity, so the input is exactly 2 * u / 255 - 1
    images = torch.randint(
        0, 256, (1, 3, 299, 299), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    expected = 2 * images.double() / 255 - 1
    torch.testing.assert_close(
        InceptionV3FID.preprocess(images).double(), expected, atol=1e-6, rtol=0
    )
    small = torch.randint(
        0, 256, (2, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )
    as_float = small.float() / 127.5 - 1  # the same images in [-1, 1]
    torch.testing.assert_close(
        InceptionV3FID.preprocess(as_float), InceptionV3FID.preprocess(small)
    )
    assert InceptionV3FID.preprocess(small).shape == (2, 3, 299, 299)
    grey = torch.full((1, 1, 4, 4), 255, dtype=torch.uint8)
    assert torch.equal(images_to_unit_range(grey), torch.ones(1, 3, 4, 4))


def test_bad_images_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        images_to_unit_range(torch.full((1, 3, 4, 4), 255.0))
    with pytest.raises(ValueError, match="channels-last"):
        images_to_unit_range(torch.zeros(1, 4, 4, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        images_to_unit_range(torch.zeros(1, 3, 4, 4, dtype=torch.int64))


def test_torchscript_and_unreadable_files_name_the_file_that_works(tmp_path):
    """Issue 13: a TorchScript Inception (torch-fidelity / clean-fid) is named as such, one line."""
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "inception-2015-12-05.pt"))
    with pytest.raises(InceptionWeightsError, match="TorchScript") as error:
        load_inception(tmp_path / "inception-2015-12-05.pt")
    assert "pt_inception-2015-12-05-6726825d.pth" in str(error.value)
    assert "\n" not in str(error.value)
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(InceptionWeightsError, match="cannot read .*pt_inception-2015-12-05"):
        load_inception(tmp_path / "cut.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(InceptionWeightsError, match="safetensors"):
        load_inception(tmp_path / "bad.safetensors")
