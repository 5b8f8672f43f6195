"""Config loading: strict keys, typed overrides, every shipped YAML loads."""

import subprocess
import sys
from pathlib import Path

import pytest

from asr.config import ConfigError, apply_overrides, from_dict, load_config, to_dict
from asr.train import TrainConfig

from trainrun import env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_every_train_config_loads_and_starts_with_its_command(path):
    cfg = load_config(TrainConfig, path)
    assert cfg.train.max_steps > 0
    first = path.read_text().splitlines()[0]
    assert first.startswith("# $ ") and "scripts/train.py" in first and path.name in first


def test_overrides_are_typed():
    cfg = load_config(TrainConfig, ROOT / "configs/train/tiny_cpu.yaml",
                      ["optim.lr=3e-4", "train.max_steps=7", "data.max_batch_size=4", "model.layerdrop=0"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps == 7
    assert cfg.data.max_batch_size == 4
    assert cfg.model.layerdrop == 0.0 and isinstance(cfg.model.layerdrop, float)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lrr=1"], "unknown key(s) lrr in optim"),
        (["train.max_steps=ten"], "train.max_steps must be int"),
        (["train.mixed_precision=fp8"], "train.mixed_precision must be one of"),
        (["optim.betas=0.9"], "optim.betas must be a list"),
        (["nonsense"], "must look like section.key=value"),
        (["data.filters.verify_audio=3"], "data.filters.verify_audio must be bool"),
        # values of the right type that would fail later (ZeroDivisionError, NaN weights, a crash in mkdir)
        (["train.save_every=0"], "train.save_every is 0; set it to 1 or more steps"),
        (["train.eval_every=0"], "train.eval_every is 0; set it to 1 or more steps"),
        (["train.log_every=0"], "train.log_every is 0; set it to 1 or more steps"),
        (["train.max_steps=-1"], "train.max_steps is -1"),
        (["optim.grad_accum_steps=0"], "optim.grad_accum_steps is 0; set it to 1 or more"),
        (["optim.lr=nan"], "optim.lr is nan; set it to a positive learning rate"),
        (["optim.lr=.inf"], "optim.lr is inf"),
        (["optim.lr=0"], "optim.lr is 0.0"),
        (["optim.betas=[0.9]"], "optim.betas is [0.9]; set it to two numbers in [0, 1)"),
        (["optim.eps=0"], "optim.eps is 0.0"),
        (["optim.max_grad_norm=-1"], "optim.max_grad_norm is -1.0"),
        (["train.save_total_limit=0"], "train.save_total_limit is 0"),
        (["train.seed=-1"], "train.seed is -1"),
        (["train.output_dir=README.md"], "train.output_dir is 'README.md'; set it to a directory path (README.md is a file"),
        (["train.output_dir=README.md/run"], "README.md is a file, not a directory"),
        (["model.hidden_dropout=1.5"], "model.hidden_dropout is 1.5; set it to a probability in [0, 1)"),
        (["model.mask_time_prob=nan"], "model.mask_time_prob is nan"),
        (["model.mask_time_length=0"], "model.mask_time_length is 0"),
        # malformed override values
        (["optim.betas=[0.9,"], "override 'optim.betas=[0.9,': its value is not valid YAML (expected the node "
                                "content, but found '<stream end>' at line 1, column 6)"),
        (["data.train={path: a"], "override 'data.train={path: a': its value is not valid YAML"),
    ],
)
def test_bad_overrides_fail_with_one_line(overrides, message, monkeypatch):
    monkeypatch.chdir(ROOT)  # README.md is a file here
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, ROOT / "configs/train/tiny_cpu.yaml", overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_round_trip_through_plain_data():
    cfg = load_config(TrainConfig, ROOT / "configs/train/tiny_cpu.yaml")
    again = from_dict(TrainConfig, to_dict(cfg))
    assert to_dict(again) == to_dict(cfg)


def test_nested_override_creates_sections():
    data = apply_overrides({}, ["a.b.c=1", "a.d=[1, 2]"])
    assert data == {"a": {"b": {"c": 1}, "d": [1, 2]}}


@pytest.mark.parametrize("text, message", [
    ("optim:\n  lr: [1e-3\ntrain: {max_steps: 3}\n", "is not valid YAML (expected ',' or ']', but got ':' at line 3, column 6)"),
    ("optim:\n  lr: 1e-3\n x: 2\n", "is not valid YAML (expected <block end>, but found '<block mapping start>' at line 3"),
    ("- a list\n- not a mapping\n", "must hold a mapping of sections (data:, model:, optim:, ...), got a list"),
])
def test_a_malformed_config_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"optim: {lr: 1e-3}  # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"run.yaml is not UTF-8 text \(byte 24\); save it as UTF-8"):
        load_config(TrainConfig, path)


@pytest.mark.parametrize("case", ["yaml", "override", "output_dir", "save_every"])
def test_train_py_reports_config_errors_in_one_line_with_exit_2(tmp_path, case):
    """The real script, before any data is read: one line on stderr, exit 2, no traceback."""
    config = ROOT / "configs/train/tiny_cpu.yaml"
    extra = {"yaml": [], "override": ["optim.betas=[0.9,"], "output_dir": [f"train.output_dir={ROOT / 'README.md'}"],
             "save_every": ["train.save_every=0"]}[case]
    if case == "yaml":
        config = tmp_path / "broken.yaml"
        config.write_text("train:\n  max_steps: [3\n")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/train.py"), "--config", str(config),
                           f"train.output_dir={tmp_path / 'run'}" if case != "output_dir" else "train.seed=0", *extra],
                          capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("config error: ")]
    assert {"yaml": "is not valid YAML", "override": "is not valid YAML", "output_dir": "is a file, not a directory",
            "save_every": "train.save_every is 0"}[case] in line
    assert not (tmp_path / "run").exists()
