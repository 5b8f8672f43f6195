"""Config loading: strict keys, typed overrides, every shipped YAML loads."""

from pathlib import Path

import pytest

from asr.config import ConfigError, apply_overrides, from_dict, load_config, to_dict
from asr.train import TrainConfig

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
    ],
)
def test_bad_overrides_fail_with_one_line(overrides, message):
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
