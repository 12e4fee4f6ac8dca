"""The paper-companion scripts in toy/ run end to end (tiny budgets) and their Euler integrator is exact.

Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data, negative t is the fake branch.
"""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

TOY_DIR = Path(__file__).resolve().parent.parent / "toy"


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"toy_{name}", TOY_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TimeVelocity(torch.nn.Module):
    """F(x, t, t_tgt) = t (every coordinate): the velocity the network sees depends only on its signed time."""

    def forward(self, x_t, t, t_tgt, y=None):
        return t[:, None].to(x_t.dtype).expand_as(x_t)


@pytest.mark.parametrize("steps", [1, 4, 50])
def test_trajectory_integrator_matches_the_euler_sum(steps):
    # Euler from t = 1 to 0 on the uniform grid t_k = 1 - k/n with dx = -(t_k - t_k+1) * sign * t_k:
    # x_end = z - sign * sum_k (1/n)(1 - k/n) = z - sign * (n + 1) / (2n)   (closed form of the sum)
    trajectories = load_script("trajectories")
    z = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64)
    shift = (steps + 1) / (2 * steps)
    for sign in (1.0, -1.0):
        path = trajectories.integrate(TimeVelocity(), z, steps, sign)
        assert path.shape == (steps + 1, 2, 2)
        torch.testing.assert_close(path[0], z, rtol=0, atol=0)
        torch.testing.assert_close(path[-1], z - sign * shift, rtol=0, atol=1e-12)


def test_compare_methods_and_trajectories_run_end_to_end(tmp_path, capsys):
    compare = load_script("compare_methods")
    out = tmp_path / "compare"
    results = compare.main(["--steps", "3", "--out", str(out), "--extra", "--eval_samples", "100",
                            "--checkpointing_steps", "0"])
    assert list(results) == ["twinflow", "rcgm", "flow-matching"]
    keys = [key for _, key in compare.COLUMNS]
    for summary in results.values():
        assert summary["step"] == 3 and all(math.isfinite(summary[key]) for key in keys)
    table = (out / "compare_moons.md").read_text().splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in table if line.startswith("| ")]
    assert cells[1:] == [[method] + [f"{summary[key]:.4f}" for key in keys] for method, summary in results.items()]
    assert (out / "compare_moons.png").stat().st_size > 0

    trajectories = load_script("trajectories")
    paths = trajectories.main([str(results["twinflow"]["run_dir"]), "--num", "20", "--steps", "5"])
    assert paths.exists() and (paths.parent / "trajectories_ends.png").exists()
    assert "mean squared distance to the one-step samples" in capsys.readouterr().out
