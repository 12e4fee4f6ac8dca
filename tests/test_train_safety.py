"""Issue 13 on the training side: no traceback, no lost work, no overwritten file.

Each kind is tested through `train.main` (or the command line): run folders, resumes, interruptions,
failed writes and non-finite weights. Time convention: see twinflow_min/transport.py.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import train
from test_train import REPO, image_folder, run_toy
from twinflow_min import evaluate, objective, run_dir, train_state, training
from twinflow_min.train_state import read_checkpoint


def refused(capsys, argv, code=2) -> str:
    """Run train.main(argv), expect SystemExit(code) and one stderr line without a traceback."""
    with pytest.raises(SystemExit) as stopped:
        train.main(argv)
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == code, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def toy_args(tmp_path, *extra, name="run"):
    return ["--toy", "moons", "--batch-size", "16", "--eval_samples", "50", "--log_every", "1",
            "--output_dir", str(tmp_path), "--run_name", name, *extra]


def metric_steps(folder) -> list[int]:
    lines = (Path(folder) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


# ------------------------------------------------------------------------------------------------
# Output folders and run names: checked before any data is loaded
# ------------------------------------------------------------------------------------------------

def test_output_folder_that_is_a_file_is_refused_before_loading_data(tmp_path, capsys, monkeypatch):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    loaded = []
    monkeypatch.setattr(train, "build_data_and_model", lambda *a: loaded.append(1))
    err = refused(capsys, toy_args(target, "--steps", "1"))
    assert "is a file, not a folder" in err and "--output_dir" in err
    err = refused(capsys, toy_args(target / "below", "--steps", "1"))  # a file part-way up the path
    assert "is a file, not a folder" in err
    assert loaded == []  # refused before any data or model was built


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a read-only /sys (Linux)")
def test_output_folder_that_cannot_be_written_is_refused(tmp_path, capsys):
    """/sys refuses new folders even to root (permission bits do not bind root)."""
    try:
        os.mkdir("/sys/twinflow-min-write-test")
    except OSError:
        pass
    else:
        os.rmdir("/sys/twinflow-min-write-test")
        pytest.skip("/sys is writable here")
    err = refused(capsys, toy_args("/sys/twinflow-min-runs", "--steps", "1"))
    assert "cannot create folders in /sys" in err and "writable --output_dir" in err


def test_run_name_too_long_for_the_file_system(tmp_path, capsys):
    err = refused(capsys, toy_args(tmp_path, "--steps", "1", name="r" * 300))
    assert "300 bytes" in err and "shorter --run_name" in err
    assert list(tmp_path.iterdir()) == []


def test_claim_is_atomic_across_threads(tmp_path):
    """Eight threads claim the same name at once: eight different folders, none shared."""
    claimed, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        claimed.append(run_dir.claim_run_folder(tmp_path, "same"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = sorted(path.name for path in claimed)
    assert names == sorted(["same"] + [f"same-{i}" for i in range(2, 9)])


def test_two_processes_with_one_output_dir_get_two_run_folders(tmp_path):
    command = [sys.executable, str(REPO / "train.py"), *toy_args(tmp_path, "--steps", "2",
                                                                   name="twin")]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=tmp_path) for _ in range(2)]
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    folders = sorted(path.name for path in tmp_path.iterdir())
    assert folders == ["twin", "twin-2"]
    for name in folders:  # each run wrote its own checkpoint and its own metrics, not interleaved
        assert read_checkpoint(tmp_path / name)["info"]["step"] == 2
        assert metric_steps(tmp_path / name) == [1, 2]


# ------------------------------------------------------------------------------------------------
# Resumes: only into the run's own folder; broken files; shapes that do not fit
# ------------------------------------------------------------------------------------------------

def test_resume_from_a_file_that_is_not_the_runs_checkpoint_is_refused(tmp_path, capsys):
    first = run_toy(tmp_path, "--steps", "2", name="first")
    folder = Path(first["run_dir"])
    other = folder / "other.safetensors"
    other.write_bytes((folder / "checkpoint.safetensors").read_bytes())
    before = (folder / "metrics.jsonl").read_text()
    err = refused(capsys, ["--resume", str(other), "--max_train_steps", "4"])
    assert "other.safetensors" in err and "pass the run folder" in err
    assert (folder / "metrics.jsonl").read_text() == before
    assert read_checkpoint(folder)["info"]["step"] == 2


@pytest.mark.parametrize("damage", ["empty", "truncated", "not safetensors"])
def test_damaged_checkpoint_file_is_one_line(tmp_path, capsys, damage):
    folder = Path(run_toy(tmp_path, "--steps", "1")["run_dir"])
    path = folder / "checkpoint.safetensors"
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2],
                      "not safetensors": b"{\"hello\": 1}"}[damage])
    err = refused(capsys, ["--resume", str(folder)])
    assert str(path) in err


@pytest.mark.parametrize("summary", ["", "{broken", '{"step": 1}'])
def test_empty_broken_or_lagging_checkpoint_json_is_rewritten_on_resume(tmp_path, summary):
    folder = Path(run_toy(tmp_path, "--steps", "2", "--max_train_steps", "2")["run_dir"])
    (folder / "checkpoint.json").write_text(summary)
    orphans = [folder / "checkpoint.safetensors.abc123.tmp", folder / "checkpoint.json.x.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"left by a killed write")
    train.main(["--resume", str(folder), "--max_train_steps", "3"])
    saved = json.loads((folder / "checkpoint.json").read_text())
    assert saved["step"] == 3 and saved["train_config"]["max_train_steps"] == 3
    assert not any(orphan.exists() for orphan in orphans)


def test_resume_with_data_of_another_shape_names_both(tmp_path, capsys):
    data = image_folder(tmp_path / "data", per_class=4, size=8)
    args = ["--dataset", "folder", "--data", str(data), "--model", "CIFAR-T/2", "--batch-size", "4",
            "--validation_every", "0", "--output_dir", str(tmp_path / "out")]
    summary = train.main([*args, "--max_train_steps", "1"])
    for label in ("cat", "dog"):  # the same folder now holds 16x16 images
        for path in (data / label).iterdir():
            path.unlink()
    image_folder(tmp_path / "data16", per_class=4, size=16)
    for label in ("cat", "dog"):
        for path in (tmp_path / "data16" / label).iterdir():
            path.rename(data / label / path.name)
    err = refused(capsys, ["--resume", summary["run_dir"], "--max_train_steps", "2"])
    assert "3x8x8" in err and "3x16x16" in err and "input_size 8" in err and "input_size 16" in err


def test_resume_with_another_model_names_both(tmp_path, capsys):
    data = image_folder(tmp_path / "data", per_class=4, size=8)
    summary = train.main(["--dataset", "folder", "--data", str(data), "--model", "CIFAR-T/2",
                          "--batch-size", "4", "--validation_every", "0", "--max_train_steps", "1",
                          "--output_dir", str(tmp_path / "out")])
    err = refused(capsys, ["--resume", summary["run_dir"], "--model", "CIFAR-S/2",
                           "--max_train_steps", "2"])
    assert "hidden_size" in err and "resume with the run's own data and model settings" in err


# ------------------------------------------------------------------------------------------------
# Interruptions: SIGTERM like Ctrl-C, exit codes, a second signal, start-up and evaluation
# ------------------------------------------------------------------------------------------------

def send_at_call(monkeypatch, call_index: int, *signums):
    """Send `signums` to this process inside the `call_index`-th TwinFlow loss evaluation."""
    original, calls = objective.twinflow_losses, []

    def losses(*args, **kwargs):
        calls.append(1)
        if len(calls) == call_index:
            for signum in signums:
                os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(objective, "twinflow_losses", losses)


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_exits_143(tmp_path, monkeypatch, capsys):
    send_at_call(monkeypatch, 3, signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        train.main(toy_args(tmp_path, "--steps", "8"))
    assert stopped.value.code == 143
    out = capsys.readouterr().out
    assert "stopped by SIGTERM after step 3" in out and f"--resume {tmp_path / 'run'}" in out
    assert read_checkpoint(tmp_path / "run")["info"]["step"] == 3


def test_second_signal_stops_at_once_in_one_line(tmp_path, monkeypatch, capsys):
    send_at_call(monkeypatch, 4, signal.SIGINT, signal.SIGINT)
    err = refused(capsys, toy_args(tmp_path, "--steps", "8", "--checkpointing_steps", "2"),
                  code=130)
    assert "stopped at once by Ctrl-C (SIGINT) during step 4" in err
    assert "checkpoint.safetensors (step 2)" in err
    assert read_checkpoint(tmp_path / "run")["info"]["step"] == 2  # intact


def test_signal_during_setup_and_during_final_evaluation(tmp_path, monkeypatch, capsys):
    original_build = train.build_data_and_model

    def build(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return original_build(*args)

    with monkeypatch.context() as patch:
        patch.setattr(train, "build_data_and_model", build)
        err = refused(capsys, toy_args(tmp_path, "--steps", "2", name="setup"), code=143)
    assert "during start-up; nothing was trained" in err
    original_evaluate = evaluate.evaluate_toy

    def evaluate_toy(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return original_evaluate(*args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_toy", evaluate_toy)
    err = refused(capsys, toy_args(tmp_path, "--steps", "2", name="final"), code=130)
    assert "during the final evaluation; training is complete and saved in" in err
    assert read_checkpoint(tmp_path / "final")["info"]["step"] == 2


def test_ctrl_c_during_imports_from_the_command_line_is_one_line(tmp_path):
    process = subprocess.Popen([sys.executable, str(REPO / "train.py"),
                                *toy_args(tmp_path, "--steps", "2")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # still importing torch
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert process.returncode == 130
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_sigterm_from_outside_the_process(tmp_path):
    """As a cluster delivers it: SIGTERM to a running `python train.py`, checkpoint, exit 143."""
    process = subprocess.Popen([sys.executable, str(REPO / "train.py"),
                                *toy_args(tmp_path, "--steps", "100000")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and metrics.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "Traceback" not in err and "Continue with: python train.py --resume" in out
    step = read_checkpoint(tmp_path / "run")["info"]["step"]
    assert step >= 1 and metric_steps(tmp_path / "run")[-1] == step


# ------------------------------------------------------------------------------------------------
# Writes that fail, metrics after a resume, non-finite weights, eval_samples 0
# ------------------------------------------------------------------------------------------------

def test_full_disk_during_a_checkpoint_names_the_step_and_the_last_good_one(tmp_path, monkeypatch,
                                                                            capsys):
    original, saves = train_state.save_file, []

    def save_file(tensors, path, metadata=None):
        saves.append(1)
        if len(saves) == 2:
            raise OSError(28, "No space left on device")
        return original(tensors, path, metadata=metadata)

    monkeypatch.setattr(train_state, "save_file", save_file)
    err = refused(capsys, toy_args(tmp_path, "--steps", "6", "--checkpointing_steps", "2"), code=4)
    assert "checkpoint of step 4" in err and "No space left on device" in err
    assert "checkpoint.safetensors (step 2)" in err
    assert read_checkpoint(tmp_path / "run")["info"]["step"] == 2
    assert list((tmp_path / "run").glob("*.tmp")) == []


def test_metrics_have_no_duplicate_steps_after_a_resume(tmp_path, monkeypatch, capsys):
    original, calls = objective.twinflow_losses, []

    def losses(*args, **kwargs):  # a NaN at step 7: the run stops, the last checkpoint is step 4
        calls.append(1)
        terms = original(*args, **kwargs)
        if len(calls) == 7:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    with monkeypatch.context() as patch:
        patch.setattr(objective, "twinflow_losses", losses)
        refused(capsys, toy_args(tmp_path, "--steps", "10", "--checkpointing_steps", "4"), code=3)
    assert metric_steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6]
    train.main(["--resume", str(tmp_path / "run")])
    assert metric_steps(tmp_path / "run") == list(range(1, 11))


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch, capsys):
    """Weights that turn infinite after step 3: the stop names the finite step-2 checkpoint, which
    resumes."""
    original = training.next_teacher

    def next_teacher(teacher, model, done, cfg):
        if done == 3:
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
        return original(teacher, model, done, cfg)

    with monkeypatch.context() as patch:
        patch.setattr(train, "next_teacher", next_teacher)
        err = refused(capsys, toy_args(tmp_path, "--steps", "5", "--checkpointing_steps", "1"),
                      code=3)
    assert "non-finite weights" in err and "step 3" in err
    assert "checkpoint.safetensors (step 2)" in err
    state = read_checkpoint(tmp_path / "run")
    assert state["info"]["step"] == 2
    assert train_state.first_nonfinite(state["model"]) is None
    assert train.main(["--resume", str(tmp_path / "run")])["step"] == 5


def test_learning_rate_that_overflows_in_one_step(tmp_path, capsys):
    err = refused(capsys, toy_args(tmp_path, "--steps", "3", "--lr", "1e39", "--max_grad_norm", "0",
                                   "--checkpointing_steps", "1"), code=3)
    assert "non-finite weights" in err and "step 1" in err and "no checkpoint was written" in err
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_eval_samples_zero_skips_the_final_evaluation(tmp_path, capsys):
    summary = train.main(toy_args(tmp_path, "--steps", "2", "--eval_samples", "0"))
    assert summary["step"] == 2 and "energy_distance_nfe1" not in summary
    assert "final evaluation skipped" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["step"] == 2


def test_resume_past_max_train_steps_is_refused_without_writing(tmp_path, capsys):
    summary = train.main(toy_args(tmp_path, "--steps", "3", "--eval_samples", "0"))
    checkpoint = Path(summary["checkpoint"])
    before = checkpoint.read_bytes()
    err = refused(capsys, ["--resume", summary["run_dir"], "--max_train_steps", "2"])
    assert "is at step 3, past max_train_steps = 2: nothing to train" in err
    assert checkpoint.read_bytes() == before  # nothing rewritten
