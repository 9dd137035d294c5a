"""The typed configuration: defaults, YAML recipes, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from simclr.config import Config, from_dict, load_config, save_config, to_dict
from simclr.errors import UserError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_load() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert (cfg.temperature, cfg.batch_size, cfg.data.source) == (0.2, None, "digits")
    assert cfg.model.encoder == "auto"
    # left to the data and the modality (simclr.schedule), chosen when a run starts
    assert (cfg.epochs, cfg.optim.name, cfg.optim.lr, cfg.optim.lr_scaling) == (None, "auto", None, "auto")
    assert cfg.augment.recipe == "auto" and cfg.augment.color_jitter_strength is None


def test_yaml_then_overrides_in_order(tmp_path: Path) -> None:
    recipe = write(tmp_path / "r.yaml", "epochs: 5\ntemperature: 0.3\nmodel:\n  encoder: resnet18\n")
    cfg = load_config(recipe, ["epochs=7", "optim.lr=0.075", "optim.lr_scaling=sqrt"])
    assert cfg.epochs == 7  # the override wins over the file
    assert cfg.temperature == 0.3  # the file wins over the default
    assert cfg.model.encoder == "resnet18"
    assert (cfg.optim.lr, cfg.optim.lr_scaling) == (0.075, "sqrt")
    assert cfg.batch_size is None  # untouched default: sized to the data
    assert load_config(None, ["epochs=3", "epochs=4"]).epochs == 4  # later overrides win


def test_override_types_are_converted() -> None:
    cfg = load_config(None, ["batch_size=64", "temperature=1", "data.image_size=32", "model.cifar_stem=false"])
    assert cfg.batch_size == 64 and isinstance(cfg.batch_size, int)
    assert cfg.temperature == 1.0 and isinstance(cfg.temperature, float)
    assert cfg.data.image_size == 32
    assert cfg.model.cifar_stem is False
    assert load_config(None, ["data.image_size=32", "data.image_size=null"]).data.image_size is None


@pytest.mark.parametrize(
    ("override", "key"), [("foo=1", "foo"), ("model.foo=1", r"model\.foo"), ("optim.betas=1", r"optim\.betas")]
)
def test_unknown_key_is_named(override: str, key: str) -> None:
    with pytest.raises(UserError, match=rf"\b{key}\b"):
        load_config(None, [override])


def test_unknown_key_in_yaml_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"augment\.colour"):
        load_config(write(tmp_path / "r.yaml", "augment:\n  colour: 1\n"))
    with pytest.raises(UserError, match=r"\blearning_rate\b"):
        load_config(write(tmp_path / "s.yaml", "learning_rate: 1\n"))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("epochs=abc", "epochs"),
        ("optim.lr=fast", r"optim\.lr"),
        ("batch_size=1.5", "batch_size"),
        ("model.cifar_stem=maybe", r"model\.cifar_stem"),
    ],
)
def test_wrong_type_is_named(override: str, key: str) -> None:
    with pytest.raises(UserError, match=rf"\b{key}\b"):
        load_config(None, [override])


def test_wrong_type_in_yaml_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"\bepochs\b"):
        load_config(write(tmp_path / "r.yaml", "epochs: abc\n"))


@pytest.mark.parametrize(
    ("override", "word"),
    [
        ("temperature=0", "temperature"),
        ("temperature=-0.1", "temperature"),
        ("batch_size=1", "batch_size"),
        ("batch_size=0", "batch_size"),
        ("epochs=0", "epochs"),
        ("model.encoder=resnet1000", "resnet1000"),
        ("augment.recipe=imagenet21k", "recipe"),
        ("model.head_version=3", "head_version"),
        ("optim.name=adam", "adam"),
        ("optim.lr_scaling=cubic", "cubic"),
        ("augment.min_scale=0", "min_scale"),
        ("data.channels=2", "channels"),
    ],
)
def test_invalid_values(override: str, word: str) -> None:
    with pytest.raises(UserError, match=word):
        load_config(None, [override])


def test_invalid_value_in_yaml(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="temperature"):
        load_config(write(tmp_path / "r.yaml", "temperature: 0\n"))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_override_without_equals() -> None:
    with pytest.raises(UserError, match="epochs"):
        load_config(None, ["epochs"])


@pytest.mark.parametrize("text", ["epochs: [1\n", "- 1\n- 2\n"])
def test_malformed_yaml_is_a_user_error(tmp_path: Path, text: str) -> None:
    # A recipe that is not valid YAML, or not a mapping, is bad input like any other: it must
    # surface as UserError (exit code 2, one line naming the file), not as a traceback.
    path = write(tmp_path / "broken.yaml", text)
    with pytest.raises(UserError, match=r"broken\.yaml"):
        load_config(path)


def non_default_config() -> Config:
    return load_config(None, [
        "epochs=3", "batch_size=32", "temperature=0.1", "seed=7", "out=/tmp/run",
        "model.encoder=resnet18", "model.head_version=2", "model.cifar_stem=true",
        "augment.recipe=cifar", "augment.color_jitter_strength=0.4", "augment.blur_prob=0.1",
        "optim.name=sgd", "optim.warmup_steps=5", "data.channels=3", "data.image_size=32",
    ])


def test_saved_config_reloads_equal(tmp_path: Path) -> None:
    for cfg in (Config(), non_default_config()):
        save_config(cfg, tmp_path / "config.yaml", comment="why\nand why not")  # comments are skipped
        assert load_config(tmp_path / "config.yaml") == cfg


def test_dict_round_trip() -> None:
    for cfg in (Config(), non_default_config()):
        d = to_dict(cfg)
        assert isinstance(d["model"], dict) and d["model"]["encoder"] == cfg.model.encoder
        assert from_dict(d) == cfg
    assert from_dict(to_dict(non_default_config())) != Config()


def test_from_dict_rejects_unknown_keys_and_bad_types() -> None:
    with pytest.raises(UserError, match="foo"):
        from_dict({"foo": 1})
    with pytest.raises(UserError, match="epochs"):
        from_dict({"epochs": "abc"})


def test_from_dict_validates_values() -> None:
    # Its docstring promises validation: a saved config with impossible values is rejected.
    with pytest.raises(UserError, match="temperature"):
        from_dict({**to_dict(Config()), "temperature": 0.0})
