"""Config loading: strict keys, typed overrides, every shipped YAML loads."""

import json
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
        (["optim.layer_decay=0"], "optim.layer_decay is 0.0; set it to a factor in (0, 1]"),
        (["optim.layer_decay=1.5"], "optim.layer_decay is 1.5"),
        (["train.save_total_limit=0"], "train.save_total_limit is 0"),
        (["train.best_metric=bleu"], "train.best_metric must be one of 'wer', 'cer', 'loss', 'last', got 'bleu'"),
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


def test_a_config_extends_another_section_by_section(tmp_path):
    """`extends:` chains (relative to the file's folder): the own keys win, mappings merge, lists are replaced."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("optim: {lr: 1.0e-3, betas: [0.9, 0.98], warmup_steps: 7}\n"
                                        "train: {max_steps: 50, seed: 3}\ndata: {augment: {enabled: true}}\n")
    (tmp_path / "sub" / "middle.yaml").write_text("extends: ../root.yaml\noptim: {lr: 5.0e-4, betas: [0.8, 0.9]}\n")
    (tmp_path / "sub" / "leaf.yaml").write_text("extends: middle.yaml\ntrain: {seed: 4}\n"
                                                "data: {augment: {speed_p: 0.0}}\n")
    cfg = load_config(TrainConfig, tmp_path / "sub" / "leaf.yaml", ["optim.warmup_steps=9"])
    assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.warmup_steps) == (5.0e-4, (0.8, 0.9), 9)
    assert (cfg.train.max_steps, cfg.train.seed) == (50, 4)
    assert cfg.data.augment.enabled is True and cfg.data.augment.speed_p == 0.0
    assert load_config(TrainConfig, tmp_path / "root.yaml").train.seed == 3  # the extended file itself unchanged


@pytest.mark.parametrize("case", ["circle", "missing", "not_a_path"])
def test_a_bad_extends_is_one_line(tmp_path, case):
    path = tmp_path / "a.yaml"
    text, message = {
        "circle": ("extends: b.yaml\n", "extends itself (a.yaml -> b.yaml -> a.yaml); remove one extends"),
        "missing": ("extends: nowhere.yaml\n", "nowhere.yaml, which does not exist; the path is relative to"),
        "not_a_path": ("extends: [b.yaml]\n", "extends must name another config file"),
    }[case]
    path.write_text(text)
    (tmp_path / "b.yaml").write_text("extends: a.yaml\ntrain: {seed: 1}\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, path)
    assert message in str(e.value) and "\n" not in str(e.value)


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


# ------------------------------------------------------------------------ accelerate and DeepSpeed configs
ACCELERATE_CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
DEEPSPEED_CONFIGS = sorted((ROOT / "configs" / "deepspeed").glob("*.json"))


def test_the_config_folders_are_not_empty():
    assert len(ACCELERATE_CONFIGS) >= 10 and len(DEEPSPEED_CONFIGS) == 3  # a moved folder must not pass vacuously


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_every_accelerate_config_is_read_by_accelerate(path):
    """Parsed by the class `accelerate launch --config_file` builds (it refuses unknown keys), and consistent:
    the command in its header names configs that exist, its DeepSpeed file exists and has the stage its name says."""
    import re

    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    cfg = ClusterConfig.from_yaml_file(path)
    assert cfg.num_processes >= 1 and cfg.num_machines >= 1 and cfg.num_processes >= cfg.num_machines
    command = next(line for line in path.read_text().splitlines() if line.startswith("# $ accelerate launch"))
    assert f"--config_file configs/accelerate/{path.name}" in command
    for train_config in re.findall(r"--config (\S+)", command):
        load_config(TrainConfig, ROOT / train_config)
    if cfg.distributed_type == DistributedType.DEEPSPEED:
        ds_file = ROOT / cfg.deepspeed_config["deepspeed_config_file"]
        stage = json.loads(ds_file.read_text())["zero_optimization"]["stage"]
        assert f"zero{stage}" in path.name and ds_file.stem in path.name
    else:
        assert "zero" not in path.name and not cfg.deepspeed_config


def resolve_auto(config: dict, mixed_precision: str = "no") -> dict:
    """The DeepSpeed config as Accelerate hands it to DeepSpeed: "auto" filled in (precision from the run,
    batch numbers as scripts/train.py sets them, buckets from a model's hidden size)."""
    config = json.loads(json.dumps(config))
    config["fp16"]["enabled"] = mixed_precision == "fp16"
    config["bf16"]["enabled"] = mixed_precision == "bf16"
    config.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, gradient_clipping=1.0)
    hidden = 1024
    for key, value in {"reduce_bucket_size": hidden * hidden, "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
                       "stage3_param_persistence_threshold": 10 * hidden}.items():
        if config["zero_optimization"].get(key) == "auto":
            config["zero_optimization"][key] = value
    assert '"auto"' not in json.dumps(config), "an 'auto' value nobody fills in"
    return config


@pytest.mark.parametrize("path", DEEPSPEED_CONFIGS, ids=lambda p: p.name)
def test_every_deepspeed_config_is_validated_by_deepspeed(path):
    """DeepSpeed's own config class (pydantic, unknown keys refused) accepts it, with the stage its name says."""
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = json.loads(path.read_text())
    for precision in ("no", "bf16", "fp16"):
        ds = DeepSpeedConfig(resolve_auto(raw, precision))
        assert f"zero{ds.zero_config.stage}" in path.stem
        assert (ds.zero_config.offload_optimizer is not None) == ("offload" in path.stem)
        assert (ds.bfloat16_config.enabled, ds.float16_config.enabled) == (precision == "bf16", precision == "fp16")


def test_deepspeed_validation_catches_a_misspelt_key():
    """The control: the class used above does refuse what a typo would make."""
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = json.loads((ROOT / "configs/deepspeed/zero2.json").read_text())
    raw["zero_optimization"]["overlap_comms"] = True
    with pytest.raises(Exception, match="overlap_comms"):
        DeepSpeedConfig(resolve_auto(raw))
