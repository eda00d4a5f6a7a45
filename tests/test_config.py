"""The typed config: presets, files, command-line overrides and their errors."""

from __future__ import annotations

import json

import pytest

from scl_fast.config import PRESETS, Config, help_text, parse_args, preset, to_dict


@pytest.mark.parametrize("name", PRESETS)
def test_presets_build_and_round_trip(name: str) -> None:
    cfg = preset(name)
    assert cfg.preset == name
    again = parse_args(["--preset", name])
    assert to_dict(again) == to_dict(cfg)


def test_presets_differ_in_size() -> None:
    widths = [preset(n).model.vision.width for n in PRESETS]
    assert widths == sorted(widths) and len(set(widths)) == 3, widths


def test_overrides_are_typed() -> None:
    cfg = parse_args(["--train.steps", "7", "--train.betas", "0.8,0.9", "--data.strict", "true", "--train.lr=3e-4"])
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.train.betas == (0.8, 0.9)
    assert cfg.data.strict is True
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.resume is None
    assert parse_args(["--train.resume", "auto"]).train.resume == "auto"


def test_unknown_key_names_the_closest() -> None:
    with pytest.raises(ValueError, match="did you mean 'train.steps'"):
        parse_args(["--train.stpes", "3"])
    with pytest.raises(ValueError, match="did you mean"):
        parse_args(["--modle.schedule", "naive"])


def test_bad_values_are_errors() -> None:
    with pytest.raises(ValueError, match="integer"):
        parse_args(["--train.steps", "3.5"])
    with pytest.raises(ValueError, match="one of"):
        parse_args(["--train.precision", "fp8"])
    with pytest.raises(ValueError, match="steps must be >= 1"):
        parse_args(["--train.steps", "0"])
    with pytest.raises(ValueError, match="unknown preset"):
        parse_args(["--preset", "huge"])


def test_file_then_overrides(tmp_path) -> None:
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("preset: compact\ntrain:\n  steps: 11\n  lr: 0.001\nmodel:\n  schedule: naive\n")
    cfg = parse_args(["--config", str(yaml_file), "--train.steps", "12"])
    assert cfg.preset == "compact" and cfg.train.steps == 12 and cfg.train.lr == 0.001
    assert cfg.model.schedule == "naive"
    assert cfg.model.vision.width == preset("compact").model.vision.width

    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({"train": {"stpes": 3}}))
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        parse_args(["--config", str(json_file)])


def test_help_lists_every_option_with_its_doc(capsys) -> None:
    text = help_text("prog", preset("demo"))
    assert "--train.head_lr_mult float (default: 1.0)" in text
    assert "LR multiplier for the fusion layers" in text
    with pytest.raises(SystemExit) as exc:
        parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--data.strict" in out and "--model.schedule" in out


def test_config_default_is_constructible() -> None:
    assert isinstance(Config(), Config)
