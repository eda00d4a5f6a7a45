"""The whole run's configuration: typed sections, presets, YAML/JSON files and ``--section.key value`` overrides.

Each section is a ``@dataclass(kw_only=True)`` next to the code it configures (``model/config.py``,
``data/config.py``); this module composes them with the training section and owns the one generic loader
that every entry point uses. Field docstrings (the string literal under a field) are read from the source,
so ``--help`` documents every option without a second copy of the text.

Precedence: preset < config file < command-line overrides. Unknown keys are errors that name the closest
valid key, because a silently ignored typo in a week-long run is the worst kind of bug.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import textwrap
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from scl_fast.data.config import DataConfig
from scl_fast.errors import ConfigError
from scl_fast.model.config import ModelConfig, model_preset

T = TypeVar("T")
PRESETS = ("demo", "compact", "paper")


@dataclass(kw_only=True)
class TrainConfig:
    """Optimisation, precision, checkpointing and logging of the training loop."""

    steps: int = 300
    """Optimizer steps to run (each is ``grad_accum`` micro-batches)."""
    lr: float = 2e-5
    """Peak learning rate of the encoders (the paper: 2e-5)."""
    head_lr_mult: float = 5.0
    """LR multiplier for the fusion layers and the heads (the paper: 5)."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases, norms, embeddings, temperature)."""
    warmup_frac: float = 0.1
    """Fraction of ``steps`` spent in linear warm-up."""
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warm-up (the paper: linear to zero)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step. Contrastive losses see only the micro-batch (x ranks) as negatives."""
    clip_grad: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast dtype: auto = bf16 on GPUs that support it, fp32 on CPU."""
    optimizer: Literal["adamw", "apex_adam", "apex_lamb"] = "adamw"
    """adamw = torch AdamW (fused on CUDA); apex_* need NVIDIA apex installed from source."""
    compile: bool = False
    """Compile the step's forward and loss with torch.compile (backward with it): one graph per frame count, no
    graph break (``scl_fast/step.py``)."""
    cuda_graphs: bool = False
    """Replay the compiled forward and backward from CUDA graphs (torch.compile's ``reduce-overhead`` mode: one
    graph per shape, warmed up and autotuned before its capture, inputs copied into static buffers). Implies
    ``compile``; CUDA only, one process (not yet with DDP/FSDP). Off by default until a GPU run has measured it."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """Data-parallel engine under torchrun (FSDP2 shards parameters: for the paper preset on many GPUs)."""
    seed: int = 0
    """Base seed; each rank uses seed + rank."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms: bit-exact resume on CPU, slower on GPU."""
    log_every: int = 10
    """Steps between metric log lines (the only host-device syncs of the loop)."""
    ckpt_every: int = 100
    """Steps between checkpoints (and one at the end); 0 = only at the end."""
    keep_ckpts: int = 2
    """How many recent checkpoints to keep on disk."""
    eval_every: int = 0
    """Steps between retrieval evaluations on the val split; 0 = only at the end."""
    max_bad_steps: int = 10
    """Abort after this many consecutive steps with a non-finite loss (each is skipped)."""
    run_dir: str | None = None
    """Output folder; default runs/<preset>-<timestamp>."""
    resume: str | None = None
    """None = fresh run, 'auto' = latest good checkpoint in run_dir, or a checkpoint path."""
    overwrite: bool = False
    """Start a fresh run in a run_dir that holds another run: its contents are first moved to a sibling folder
    ``<run_dir>.replaced-<time>`` (nothing is deleted). Without it such a run_dir is refused."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"train.steps must be >= 1, got {self.steps}")
        if self.grad_accum < 1:
            raise ValueError(f"train.grad_accum must be >= 1, got {self.grad_accum}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"train.warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.cuda_graphs and self.optimizer != "adamw":
            raise ValueError("train.cuda_graphs needs train.optimizer adamw (its fused kernel skips a non-finite "
                             "step on the device; an apex optimizer needs a host read)")


@dataclass(kw_only=True)
class Config:
    """One pre-training run."""

    preset: Literal["demo", "compact", "paper"] = "demo"
    """The preset this config started from (informational once resolved)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model architecture, attention backend, losses and step schedule."""
    data: DataConfig = field(default_factory=DataConfig)
    """Inputs, decoding and batching."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, precision, checkpoints and logs."""


def preset(name: str) -> Config:
    """A complete config for one of ``PRESETS``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")
    model = model_preset(name)  # type: ignore[arg-type]
    if name == "demo":
        # Tiny model on the synthetic corpus: a higher LR because it trains from scratch, in minutes.
        # training pads every caption to max_text_len (static shapes): the demo corpus's captions and the fine-tuning
        # demos' questions and statements have at most 11 tokens, so 16 (a multiple of 8) wastes the least
        data = DataConfig(image_size=model.vision.image_size, tokenizer="demo", max_text_len=16)
        # ITC takes off after ~40 steps from scratch (model_preset("demo"): init_std); 700 steps ran in about 4 min
        # on 2 CPU cores, demo corpus generation and evaluation included (the limit is 5).
        train = TrainConfig(steps=700, lr=1e-3, head_lr_mult=1.0, warmup_frac=0.05, ckpt_every=100, log_every=25)
    elif name == "compact":
        data = DataConfig(image_size=model.vision.image_size)
        train = TrainConfig(steps=10_000, lr=1e-4)
    else:
        data = DataConfig(image_size=model.vision.image_size)
        train = TrainConfig(steps=100_000, lr=2e-5, precision="auto")
    return Config(preset=name, model=model, data=data, train=train)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------
# Generic dataclass <-> dict / command line
# ----------------------------------------------------------------------------------------------------------------


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal right under each field), from its source and its
    dataclass bases'."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            docs |= field_docs(base)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return docs
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    # each class of the MRO resolves its annotations in its own module (a subclass's fields in another module)
    return typing.get_type_hints(cls)


def _fields(cls: type) -> dict[str, Any]:
    hints = _hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(options))}"


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert ``value`` (from YAML/JSON or a command-line string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors) or f"{name}: cannot parse {value!r}")
    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ValueError(f"{name} must be one of {list(args)}, got {value!r}")
    if origin is tuple:
        items = value
        if isinstance(value, str):
            items = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(items, list | tuple):
            raise ValueError(f"{name} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], name) for v in items)
        if len(items) != len(args):
            raise ValueError(f"{name} needs {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, name) for v, a in zip(items, args, strict=True))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{name}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return str(value)
    raise ValueError(f"{name}: unsupported field type {tp!r}")


def from_dict(cls: type[T], data: dict[str, Any], *, prefix: str = "", base: T | None = None) -> T:
    """Build ``cls`` from a (nested) mapping, starting from ``base`` (or the defaults); unknown keys raise."""
    fields = _fields(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ValueError(f"unknown config key {prefix}{key!r}{_suggest(key, list(fields))}")
        tp = fields[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            inner_base = getattr(base, key) if base is not None else None
            kwargs[key] = from_dict(tp, value, prefix=f"{prefix}{key}.", base=inner_base)
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    if base is not None:
        return dataclasses.replace(base, **kwargs)  # type: ignore[type-var]
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for JSON/YAML."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def flat_options(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Every settable option as (dotted name, type, doc), depth-first; what ``--help`` lists."""
    out = []
    docs = field_docs(cls)
    for name, tp in _fields(cls).items():
        if dataclasses.is_dataclass(tp):
            out.extend(flat_options(tp, f"{prefix}{name}."))
        else:
            out.append((f"{prefix}{name}", tp, docs.get(name, "")))
    return out


def overrides_to_dict(pairs: list[tuple[str, str]], cls: type) -> dict[str, Any]:
    """[("model.vision.width", "384"), ...] -> nested dict, each dotted key checked against ``cls``."""
    valid = {name for name, _, _ in flat_options(cls)}
    nested: dict[str, Any] = {}
    for key, value in pairs:
        if key not in valid:
            raise ValueError(f"unknown option --{key}{_suggest(key, sorted(valid))}")
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or JSON config file into a dict; a missing or malformed file is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise ConfigError(f"config file must be .yaml, .yml or .json, got {path}")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except ValueError as err:  # json.JSONDecodeError
        raise ConfigError(f"config file {path} is not valid JSON: {err}") from None
    except Exception as err:  # yaml.YAMLError and its subclasses, whose messages span lines
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def help_text(prog: str, defaults: Any, usage: str | None = None) -> str:
    """Usage plus every option of ``defaults``' config class with its type, its default (from ``defaults``) and its
    docstring."""
    lines = [
        usage or f"usage: {prog} [--config FILE] [--preset {{{','.join(PRESETS)}}}] [--section.key VALUE ...]",
        "",
        "Precedence: preset < --config file (YAML or JSON) < --section.key overrides.",
        f"Defaults shown are those of the '{defaults.preset}' preset.",
        "",
    ]
    section = None
    for name, tp, doc in flat_options(type(defaults)):
        top = name.split(".")[0]
        if top != section:
            section = top
            lines.append(f"[{top}]")
        lines.append(f"  --{name} {_type_name(tp)} (default: {_get(defaults, name)!r})")
        if doc:
            lines.append(f"      {doc}")
    return "\n".join(lines)


def parse_args(argv: list[str], prog: str = "python -m scl_fast.train", *,
               make_preset: Callable[[str], Any] = preset, usage: str | None = None) -> Any:
    """Resolve a ``Config`` from command-line arguments (raises SystemExit(0) after printing ``--help``).

    ``make_preset`` builds the starting point from a preset name; the class of what it returns is the config class
    the file and the overrides are checked against (fine-tuning passes its own, ``scl_fast.finetune.config``).

    Raises:
        ConfigError: an unknown or malformed option, a bad config file, or a value its section refuses.
    """
    try:
        return _parse_args(argv, prog, make_preset, usage)
    except ConfigError:
        raise
    except ValueError as err:  # the sections' __post_init__ checks and the coercions
        raise ConfigError(str(err)) from None


def _parse_args(argv: list[str], prog: str, make_preset: Callable[[str], Any], usage: str | None) -> Any:
    config_file = None
    preset_name: str | None = None
    pairs: list[tuple[str, str]] = []
    want_help = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            want_help = True
            i += 1
            continue
        if not arg.startswith("--"):
            raise ValueError(f"expected --option value, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise ValueError(f"option --{key} needs a value")
            value = argv[i + 1]
            i += 1
        i += 1
        if key == "config":
            config_file = value
        elif key == "preset":
            preset_name = value
        else:
            pairs.append((key, value))
    file_data = load_file(config_file) if config_file else {}
    file_preset = file_data.pop("preset", "demo")
    cfg = make_preset(preset_name or file_preset)  # --preset on the command line beats the file's
    if want_help:
        print(help_text(prog, cfg, usage))
        raise SystemExit(0)
    cls = type(cfg)
    if file_data:
        cfg = from_dict(cls, file_data, base=cfg)
    if pairs:
        cfg = from_dict(cls, overrides_to_dict(pairs, cls), base=cfg)
    return cfg
