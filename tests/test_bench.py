"""Smoke tests of the benchmark scripts in bench/ (tiny sizes, seconds each).

Timing is never asserted: the scripts must run, print their ratio tables and write their JSON. What
is asserted are the counts behind the tables: the forward-equivalents predicted from the loss code's
structure against the passes a step really makes (counted with forward hooks), the CPU memory
accounting against allocations of known size, and the state bytes of each variant against their
composition (weights, EMA copy, AdamW moments). Time convention: see twinflow_min/transport.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import bench_memory  # noqa: E402
import bench_sampling  # noqa: E402
import bench_train_step  # noqa: E402
import gpu_check  # noqa: E402
from dmd2_baseline import make_dmd2_step  # noqa: E402

CPU = torch.device("cpu")
TINY_DIT = dict(input_size=8, hidden_size=32, depth=1, num_heads=2)  # CIFAR-T/2 shrunk: 16 tokens
ONE_THREAD = ["--threads", "1"]  # the scripts' default, stated; the fixture below restores pytest's


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread inside each test (fast on a busy 2-core machine), pytest's setting after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cifar():
    return _common.build("CIFAR-T/2", CPU, **TINY_DIT)


# ------------------------------------------------------------------ forward-equivalent predictions
@pytest.mark.parametrize("recipe, batch, cfg, expected", [
    ("flow matching", 8, False, 3.0),
    # 4 rows with grad x 3 + 2 RCGM rows x N=2 teacher passes + 2 delta_v rows (+ 2 CFG rows)
    ("twinflow tutorial", 8, False, 12 + 4 + 2),
    ("twinflow tutorial", 8, True, 12 + 4 + 2 + 2),
    # batch 8 -> 2 rows per block: 3 + adv 2/8 + rollout 2 * 6/8 + delta_v 2 * 2/8 (+ CFG 2 * 6/8)
    ("twinflow large", 8, False, 3 + 0.25 + 1.5 + 0.5),
    ("twinflow large", 8, True, 3 + 0.25 + 1.5 + 0.5 + 1.5),
    ("dmd2", 8, False, 3 + 2 + 3),
])
def test_forward_equivalents_hand_counts(recipe, batch, cfg, expected):
    assert _common.forward_equivalents(recipe, batch, cfg=cfg)["total"] == pytest.approx(expected)


@pytest.mark.parametrize("recipe", _common.RECIPES)
@pytest.mark.parametrize("batch, cfg, image_free", [(8, True, False), (6, False, False),
                                                     (10, True, True)])
def test_predicted_passes_equal_the_counted_passes(recipe, batch, cfg, image_free):
    model = tiny_cifar()
    step = _common.make_train_step(recipe, model, batch, CPU, cfg=cfg, image_free=image_free)
    step()  # EMA copy and optimizer state exist from here on, like in the scripts
    assert step.cfg == cfg
    teacher = step.state[1]
    counted = _common.count_forward_equivalents(step, [model, teacher], batch)
    predicted = _common.forward_equivalents(recipe, batch, cfg=cfg, image_free=image_free)
    assert counted == pytest.approx(predicted["total"])


def test_dmd2_passes_equal_the_prediction():
    step = make_dmd2_step("CIFAR-T/2", 4, CPU, **TINY_DIT)
    counted = _common.count_forward_equivalents(step, step.networks, 4)
    assert counted == pytest.approx(_common.forward_equivalents("dmd2", 4, cfg=False)["total"])


# ------------------------------------------------------------------------------- memory accounting
def test_cpu_transient_peak_counts_live_bytes():
    mib_floats = 2 ** 18  # float32 elements in one MiB

    def step():
        first = torch.ones(mib_floats)
        second = torch.ones(2 * mib_floats)
        del first
        third = torch.ones(mib_floats)
        del second, third

    memory = _common.peak_step_memory(step, CPU, [])
    assert memory["state_mib"] == 0
    assert memory["transient_mib"] == pytest.approx(3.0, abs=0.01)  # first + second alive at once


def test_state_bytes_match_the_composition_of_each_variant():
    def nbytes(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    reference = tiny_cifar()
    weights = nbytes([*reference.parameters(), *reference.buffers()])
    trainable = nbytes([p for p in reference.parameters() if p.requires_grad])
    step = _common.make_train_step("twinflow tutorial", tiny_cifar(), 4, CPU)
    step()
    # student + EMA copy + AdamW exp_avg and exp_avg_sq of every trainable weight (+ step counters)
    counters = nbytes([s["step"] for s in step.state[2].state.values()])
    assert _common.state_bytes(*step.state) == 2 * weights + 2 * trainable + counters
    dmd2 = make_dmd2_step("CIFAR-T/2", 4, CPU, **TINY_DIT)
    dmd2()
    counters = sum(nbytes([s["step"] for s in opt.state.values()]) for opt in dmd2.state[3:])
    # generator, real score, fake score + two AdamW on the two trainable networks
    assert _common.state_bytes(*dmd2.state) == 3 * weights + 4 * trainable + counters


# ------------------------------------------------------------------------------ scripts end to end
def test_bench_train_step_prints_bounds_and_writes_json(tmp_path, capsys):
    out = tmp_path / "train_step.json"
    result = bench_train_step.main(["--model", "toy", "--batch", "8", "--rounds", "1",
                                    "--steps", "1", "--json", str(out), *ONE_THREAD])
    printed = capsys.readouterr().out
    assert "bound x FM" in printed and "twinflow large" in printed
    assert json.loads(out.read_text())["results"].keys() == set(_common.RECIPES)
    for row in result.values():
        assert row["counted"] == pytest.approx(row["fwd_equivalents"]["total"])
        assert row["ratio"] > 0


def test_bench_memory_prints_ratios_and_writes_json(tmp_path, capsys):
    out = tmp_path / "memory.json"
    result = bench_memory.main(["--model", "toy", "--batch", "4", "--rounds", "1",
                                "--json", str(out), *ONE_THREAD])
    printed = capsys.readouterr().out
    assert "torch.profiler" in printed and "dmd2" in printed
    assert json.loads(out.read_text())["results"].keys() == set(bench_memory.VARIANTS)
    for row in result.values():
        assert row["peak_mib"] == pytest.approx(row["state_mib"] + row["transient_mib"])
        assert row["transient_mib"] > 0
    # three networks and two optimizers against one network, its EMA copy and one optimizer
    assert result["dmd2"]["state_mib"] > 1.5 * result["flow matching"]["state_mib"]


def test_bench_sampling_prints_speedups_and_writes_json(tmp_path, capsys):
    out = tmp_path / "sampling.json"
    result = bench_sampling.main(["--models", "toy", "--batches", "1", "3", "--rounds", "1",
                                  "--json", str(out), *ONE_THREAD])
    printed = capsys.readouterr().out
    assert "batch 1 (latency)" in printed and "batch 3 (throughput)" in printed
    rows = result["toy"][3]
    assert list(rows) == [1, 2, 4, 50]
    assert rows[50]["speedup_vs_50"] == 1.0
    assert rows[1]["ms_per_sample"] == pytest.approx(rows[1]["ms_per_call"] / 3)
    assert json.loads(out.read_text())["results"]["toy"]["1"].keys() == {"1", "2", "4", "50"}


def test_gpu_check_smoke_runs_every_part_on_cpu(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    gpu_check.main(["--smoke", "--device", "cpu", "--out", str(out)])
    report = json.loads(out.read_text())
    assert "error" not in report
    assert list(report["parts"]) == ["cifar_eager", "sit_xl", "sampling", "cifar_compiled"]
    for recipe in _common.RECIPES:
        assert report["parts"]["cifar_eager"][recipe]["img_per_s"] > 0
    assert report["parts"]["cifar_compiled"]["flow matching"]["compile_s"] > 0
    for key in ("no_checkpointing", "gradient_checkpointing"):
        search = report["parts"]["sit_xl"][key]["largest_batch"]
        assert search["largest_fitting"] == 8 and search["capped_at_search_limit"]  # CPU never OOMs
    assert report["parts"]["sampling"]["SiT-XL/2"]["2"]["50"]["speedup_vs_50"] == 1.0


def test_gpu_check_records_an_exhausted_budget_as_skipped(tmp_path):
    out = tmp_path / "gpu.json"
    gpu_check.main(["--smoke", "--device", "cpu", "--out", str(out), "--budget", "1e-9"])
    parts = json.loads(out.read_text())["parts"]
    assert all(parts[name]["skipped"].startswith("time budget") for name in parts)


def test_largest_batch_search_brackets_the_limit(monkeypatch):
    limit, probes = 100, []

    def fits(make_step, batch, device):  # stands in for a step that may run out of memory
        probes.append(batch)
        return batch <= limit

    monkeypatch.setattr(gpu_check, "fits", fits)
    search = gpu_check.largest_batch(None, 16, 1024, CPU, gpu_check.Budget(60, smoke=True))
    assert probes[:4] == [16, 32, 64, 128]
    assert search["largest_fitting"] <= limit < search["smallest_failing"]
    assert search["smallest_failing"] - search["largest_fitting"] <= search["largest_fitting"] // 8


# --------------------------------------------------------------------------- refusals at the door
@pytest.mark.parametrize("script, argv, message", [
    (bench_sampling, ["--batches", "0"], "--batches must be integer(s) >= 1"),
    (bench_sampling, ["--models", "nope"], "unknown model 'nope'"),
    (bench_train_step, ["--rounds", "0"], "--rounds must be an integer >= 1"),
    (bench_memory, ["--device", "gpu"], "is not a device name"),
    (bench_memory, ["--threads", "-1"], "--threads must be an integer >= 0"),
    (bench_memory, ["--batch", "2"], "needs a row in each of its 4 row groups"),
    (gpu_check, ["--out", "x.json", "--budget", "0", "--smoke"], "--budget must be a positive"),
])
def test_bad_arguments_stop_with_one_line(script, argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        script.main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_existing_output_files_are_never_overwritten(tmp_path, capsys):
    existing = tmp_path / "taken.json"
    existing.write_text("{}")
    for script, argv in ((bench_sampling, ["--json", str(existing)]),
                         (gpu_check, ["--smoke", "--device", "cpu", "--out", str(existing)])):
        with pytest.raises(SystemExit):
            script.main(argv)
        assert "exists" in capsys.readouterr().err
    assert existing.read_text() == "{}"


def test_full_gpu_check_refuses_a_cpu(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "gpu.json")])
    assert "--smoke" in capsys.readouterr().err
