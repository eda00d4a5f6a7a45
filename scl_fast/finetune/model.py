"""The fine-tuning models and ``--init``: a pre-trained SCL model's encoders and fusion, reused whole.

VQA and NLVR2 put a classifier (``heads.ClassifierHead``) on the pooled feature of the fusion encoder; retrieval
fine-tunes the ``SCLModel`` itself with its ITC and ITM heads (``tasks/retrieval.py``). ``--init`` loads the weights
of a pre-training checkpoint (or of another fine-tuning run's backbone) into the ``SCLModel``; a checkpoint whose
tensors do not fit is a one-line ``CheckpointError`` before anything trains.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from scl_fast import checkpoint
from scl_fast.checkpoint import CheckpointError
from scl_fast.model import ModelConfig, SCLModel

from .heads import ClassifierHead

BACKBONE = "backbone."


class PooledClassifier(nn.Module):
    """``SCLModel`` + a classifier on the pooled feature of each (image, text) pair.

    With ``images=2`` (NLVR2, METER's "pair" setting) each sample holds two images as two frames; each is fused with
    the text on its own, the second with a learnt type offset (METER gives the second image a third token type,
    initialised as the first image's: here an offset that starts at zero), and the two pooled features are
    concatenated. The class names (VQA's answers) are a buffer, so a checkpoint says what its outputs mean.
    """

    def __init__(self, cfg: ModelConfig, class_names: list[str], *, images: int = 1,
                 classifier_lr_mult: float = 1.0) -> None:
        super().__init__()
        if images not in (1, 2):
            raise ValueError(f"images must be 1 or 2, got {images}")
        self.backbone = SCLModel(cfg)
        width = cfg.fusion.width
        self.images, self.classifier_lr_mult = images, classifier_lr_mult
        self.head = ClassifierHead(2 * width * images, 2 * width, len(class_names), init_std=cfg.init_std)
        if images == 2:
            self.second_image = nn.Parameter(torch.zeros(width))
        table = torch.tensor(list(json.dumps(class_names).encode("utf-8")), dtype=torch.uint8)
        self.register_buffer("class_table", table)

    @property
    def class_names(self) -> list[str]:
        return json.loads(bytes(self.class_table.tolist()).decode("utf-8"))

    @staticmethod
    def class_names_in(weights: dict[str, torch.Tensor]) -> list[str]:
        """The class names stored in a checkpoint's weights (to build the model that loads them)."""
        if "class_table" not in weights:
            raise CheckpointError("the checkpoint holds no classifier (no class_table): not a VQA or NLVR2 run")
        return json.loads(bytes(weights["class_table"].tolist()).decode("utf-8"))

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """pixels (B, F, 3, H, W) (F = 2 image frames for pairs), text (B, L) -> (B, classes) logits."""
        if self.images == 1:
            return self.head(self.backbone.pooled_features(pixels, input_ids, attention_mask))
        bb = self.backbone
        b, nf = pixels.shape[:2]
        if nf != 2:
            raise ValueError(f"a pair model reads two images per sample as frames, got pixels {tuple(pixels.shape)}")
        mask = attention_mask.bool()
        text = bb.fusion.project_text(bb.text(input_ids, mask)).repeat_interleave(2, dim=0)  # (2B, L, W)
        image = bb.fusion.project_image(bb.vision(pixels.flatten(0, 1)[:, None]))  # (2B, 1+P, W): s0 img0, s0 img1..
        second = (torch.arange(2 * b, device=pixels.device) % 2).to(image.dtype)  # 1 for each right image
        image = image + second[:, None, None] * self.second_image
        pooled = bb.fuse_pooled(text, mask.repeat_interleave(2, dim=0), image, 1)  # (2B, 2W)
        return self.head(pooled.reshape(b, -1))  # (B, 4W) -> (B, classes)

    def param_groups(self, lr: float, weight_decay: float, head_lr_mult: float) -> list[dict]:
        """The backbone's groups (encoders at ``lr``, fusion and pre-training heads at ``lr * head_lr_mult``: METER's
        lr_mult_cross_modal) and the new classifier at ``lr * classifier_lr_mult`` (METER's lr_mult_head)."""
        groups = self.backbone.param_groups(lr, weight_decay, head_lr_mult)
        own = [(n, p) for n, p in self.named_parameters() if not n.startswith(BACKBONE) and p.requires_grad]
        for decay in (True, False):
            params = [p for _, p in own if (p.ndim >= 2) == decay]
            if params:
                groups.append({"params": params, "lr": lr * self.classifier_lr_mult,
                               "weight_decay": weight_decay if decay else 0.0,
                               "name": f"classifier_{'decay' if decay else 'no_decay'}"})
        return groups


def resolve(path: str | Path) -> Path:
    """The checkpoint ``--init`` names: a checkpoint folder, or a run folder (its newest checkpoint); verified."""
    path = Path(path)
    found = checkpoint.latest_checkpoint(path) if checkpoint.list_checkpoints(path) else path
    if not (found / checkpoint.META).is_file():
        raise CheckpointError(f"--init {path}: no checkpoint there (give a run folder with checkpoints/ or a "
                              f"checkpoint folder RUN_DIR/checkpoints/step_N)")
    checkpoint.verify(found)
    return found


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a checkpoint's weights, from the file header (no tensor is read)."""
    from safetensors import safe_open

    file = path / checkpoint.WEIGHTS
    try:
        with safe_open(str(file), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    except Exception as err:  # safetensors raises several types on damaged files
        raise CheckpointError(f"cannot read weights {file}: {err}") from err
    shapes |= {name: shapes[target] for name, target in aliases.items() if target in shapes}
    return _backbone_part(shapes)


def _backbone_part(state: dict) -> dict:
    """A pre-training state as is; a fine-tuning run's state reduced to its backbone (head and buffers dropped)."""
    if any(k.startswith(BACKBONE) for k in state):
        return {k[len(BACKBONE):]: v for k, v in state.items() if k.startswith(BACKBONE)}
    return state


def check_fits(cfg: ModelConfig, path: Path) -> None:
    """A one-line ``CheckpointError`` unless the checkpoint's tensors are exactly those of ``SCLModel(cfg)``."""
    want = {k: tuple(v.shape) for k, v in SCLModel(cfg, device="meta").state_dict().items()}
    have = _shapes(path)
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = [f"{k} {have[k]} (model: {want[k]})" for k in sorted(set(want) & set(have)) if want[k] != have[k]]
    if missing or unexpected or wrong:
        parts = [f"{len(wrong)} tensors of another shape, e.g. {wrong[0]}" if wrong else "",
                 f"{len(missing)} missing, e.g. {missing[0]}" if missing else "",
                 f"{len(unexpected)} unexpected, e.g. {unexpected[0]}" if unexpected else ""]
        raise CheckpointError(f"--init {path} does not fit the model: " + "; ".join(p for p in parts if p)
                              + " (the model section comes from the checkpoint's config: drop --model overrides "
                                "that change shapes)")


def load_backbone(model: SCLModel, path: Path) -> None:
    """Load the checkpoint's SCL weights into ``model`` (after ``check_fits``)."""
    try:
        model.load_state_dict(_backbone_part(checkpoint.load_weights(path)))
    except RuntimeError as err:
        raise CheckpointError(f"--init {path} does not fit the model: {' '.join(str(err).split())[:300]}") from err
