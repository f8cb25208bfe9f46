import tomllib

import pytest

from training.config import Config, config_from_dict, load_config
from training.errors import InputError

DEFAULT = "training/configs/synthetic.toml"


def test_default_config_loads_and_round_trips_through_toml():
    config = load_config(DEFAULT)
    assert config.model.head == "cosine" and config.data.source == "synthetic"
    assert config_from_dict(tomllib.loads(config.to_toml())) == config


def test_overrides_are_typed_toml_values():
    config = load_config(DEFAULT, [
        "model.head=dot", "model.layer_norm=false", "model.temperature=0.5",
        "model.tower_layers=[64, 32]", "training.epochs=2", "training.learning_rate=1",
    ])
    assert config.model.head == "dot" and config.model.layer_norm is False
    assert config.model.tower_layers == [64, 32] and config.model.layers_for("item") == [64, 32]
    assert config.training.epochs == 2 and config.training.learning_rate == 1.0


def test_per_tower_layers_override_the_shared_ones():
    config = load_config(None, ["model.tower_layers=[64, 32]", "model.user_tower_layers=[128, 32]"])
    assert config.model.layers_for("user") == [128, 32]
    assert config.model.layers_for("item") == [64, 32]


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.head=euclid", "unknown model.head 'euclid'; valid heads: cosine, dot"),
        ("model.embedding_dim=0", "model.embedding_dim must be >= 1"),
        ("model.temperature=0", "model.temperature must be a positive number"),
        ("model.temperature=-2.5", "model.temperature must be a positive number"),
        ("model.colour=1", "unknown config key model.colour"),
        ("modle.head=dot", "unknown config section"),
        ("training.epochs=1.5", "training.epochs must be int"),
        ("model.layer_norm=1", "model.layer_norm must be bool"),
        ("data.split=kfold", "unknown data.split 'kfold'"),
        ("training.optimizer=lamb", "unknown training.optimizer 'lamb'"),
        ("model.user_tower_layers=[8]", "must end at the same width"),
        ("headdot", "--set expects section.key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(DEFAULT, [override])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nhead=")
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(bad)


def test_defaults_are_valid():
    assert isinstance(config_from_dict({}), Config)
