from pathlib import Path

import pytest
import yaml

from im_pipeline.config import ConfigError, ExperimentConfig, apply_overrides, load_config, write_resolved_config


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_and_overrides(tmp_path):
    path = _write(tmp_path, {"name": "x", "arms": [{"name": "IT", "loss_mode": "it"}]})
    cfg = load_config(path, ["training.epochs=3", "arms.0.kl_coef=0.5", "seeds=[1, 2]", "data.n=16"])
    assert cfg.training.epochs == 3
    assert cfg.arms[0].kl_coef == 0.5
    assert cfg.seeds == [1, 2]
    assert cfg.data.n == 16
    from im_pipeline.runs.layout import RunLayout

    assert RunLayout.of(cfg).unit("IT", 1).dir == Path("runs/x/IT/seed-1")


def test_bad_enum_names_key_value_and_allowed(tmp_path):
    path = _write(tmp_path, {"name": "x", "arms": [{"name": "A", "loss_mode": "imm"}]})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "arms.0.loss_mode" in msg and "'imm'" in msg
    assert "'it'" in msg and "'im_release'" in msg and "'weighted'" in msg


def test_unknown_key_is_named(tmp_path):
    path = _write(tmp_path, {"name": "x", "training": {"epochz": 2}})
    with pytest.raises(ConfigError, match=r"training\.epochz: unknown key") as err:
        load_config(path)
    assert "did you mean 'epochs'?" in str(err.value)
    assert "--set" not in str(err.value)  # the file wrote it


def test_unknown_key_from_set_names_the_override_and_suggests(tmp_path):
    path = _write(
        tmp_path, {"name": "x", "arms": [{"name": "IT", "loss_mode": "it"}, {"name": "IM", "loss_mode": "im"}]}
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, ["training.epochs=2", "arms.1.los_mode=it"])
    line = next(x for x in str(err.value).splitlines() if "unknown key" in x)
    assert line.strip().startswith("arms.1.los_mode: unknown key (from --set arms.1.los_mode=it)")
    assert "did you mean 'loss_mode'?" in line
    with pytest.raises(ConfigError) as err:
        load_config(path, ["evaluation.zzz=1"])
    assert "(from --set evaluation.zzz=1)" in str(err.value) and "did you mean" not in str(err.value)


def test_bad_number_names_key(tmp_path):
    path = _write(tmp_path, {"name": "x"})
    with pytest.raises(ConfigError, match=r"training\.learning_rate.*-1"):
        load_config(path, ["training.learning_rate=-1"])


def test_weighted_needs_lambda_and_lambda_needs_weighted():
    with pytest.raises(ConfigError, match="prompt_loss_weight"):
        from im_pipeline.config import config_from_dict

        config_from_dict({"name": "x", "arms": [{"name": "W", "loss_mode": "weighted"}]})
    with pytest.raises(ConfigError, match="only used with loss_mode 'weighted'"):
        from im_pipeline.config import config_from_dict

        config_from_dict({"name": "x", "arms": [{"name": "W", "loss_mode": "it", "prompt_loss_weight": 0.5}]})


def test_duplicate_arm_names_rejected():
    from im_pipeline.config import config_from_dict

    with pytest.raises(ConfigError, match="unique"):
        config_from_dict({"name": "x", "arms": [{"name": "A", "loss_mode": "it"}, {"name": "A", "loss_mode": "im"}]})


@pytest.mark.parametrize(
    "override, message",
    [
        ("training", "must look like key.path=value"),
        ("=3", "empty key"),
        ("arms.5.loss_mode=im", "not an index"),
        ("name.sub=1", "is a value, not a section"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides({"name": "x", "arms": [{"name": "IT", "loss_mode": "it"}]}, [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy)


def test_resolved_config_round_trips_and_hash_is_stable(tmp_path, monkeypatch):
    cfg = ExperimentConfig(name="x")
    out = write_resolved_config(cfg, tmp_path / "run", arm="IT", seed=0)
    data = yaml.safe_load(out.read_text())
    assert data["_arm"] == "IT" and data["_seed"] == 0
    assert data["_config_hash"] == cfg.config_hash()
    clean = {k: v for k, v in data.items() if not k.startswith("_")}
    assert ExperimentConfig.model_validate(clean).config_hash() == cfg.config_hash()
    changed = cfg.model_copy(update={"seeds": [1]})
    assert changed.config_hash() != cfg.config_hash()


def test_settings_are_resolved_once_at_load(monkeypatch, tmp_path):
    """Loading folds the environment into the config; afterwards only the config counts."""
    from im_pipeline.config import config_from_dict

    monkeypatch.setenv("IM_PIPELINE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IM_PIPELINE_TRAIN_LAUNCHER", " torchrun --nproc_per_node 2 ")
    monkeypatch.setenv("IM_PIPELINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("IM_PIPELINE_MAX_WORKERS", "3")
    cfg = config_from_dict({"name": "x"})
    s = cfg.settings
    assert (s.data_dir, s.train_launcher, s.cache_dir, s.max_workers) == (
        tmp_path.resolve(),
        "torchrun --nproc_per_node 2",
        tmp_path / "cache",
        3,
    )
    with pytest.raises(Exception, match="frozen"):
        s.max_workers = 4
    # the config's own values win; the environment is not read again
    own = config_from_dict(
        {
            "name": "x",
            "data_dir": "/",
            "training": {"launcher": "accelerate launch"},
            "orchestration": {"max_workers": 2},
        }
    )
    assert (own.settings.data_dir, own.settings.train_launcher, own.settings.max_workers) == (
        Path("/"),
        "accelerate launch",
        2,
    )
    for name in ("IM_PIPELINE_DATA_DIR", "IM_PIPELINE_TRAIN_LAUNCHER", "IM_PIPELINE_CACHE", "IM_PIPELINE_MAX_WORKERS"):
        monkeypatch.delenv(name)
    assert cfg.settings == s  # resolved: independent of the process's environment from now on
    assert config_from_dict(cfg.to_dict()) == cfg  # a resolved config resolves to itself
    plain = config_from_dict({"name": "x"})
    assert (plain.settings.data_dir, plain.settings.train_launcher, plain.settings.max_workers) == (None, None, 1)
    assert plain.settings.cache_dir == Path.home() / ".cache" / "im-pipeline"
    assert ExperimentConfig(name="x").resolved_data_dir() is None  # built directly: nothing folded in


def test_a_missing_data_dir_is_named_with_its_origin(monkeypatch, tmp_path):
    from im_pipeline.config import config_from_dict

    monkeypatch.setenv("IM_PIPELINE_DATA_DIR", str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match=r"gone \(from \$IM_PIPELINE_DATA_DIR\) does not exist"):
        config_from_dict({"name": "x"})
    with pytest.raises(ConfigError, match=r"nope \(from data_dir in the config\) does not exist"):
        config_from_dict({"name": "x", "data_dir": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match=r"flag \(from --data-dir\) does not exist"):
        config_from_dict({"name": "x"}, data_dir=str(tmp_path / "flag"))
    monkeypatch.setenv("IM_PIPELINE_MAX_WORKERS", "many")
    with pytest.raises(ValueError, match="IM_PIPELINE_MAX_WORKERS='many': must be a positive integer"):
        config_from_dict({"name": "x", "data_dir": str(tmp_path)})
