"""The SCL model and its two step schedules.

``SCLModel.forward`` computes the four pre-training losses of one step (SCL_METHOD.md):

- ``naive``: the public release's five passes (ITM, MLM, ITC, SCL-vision, SCL-text), each re-encoding what it
  needs (the intact image four times), with the project's two fixes (feature-dim normalisation, a gather whose
  gradient is summed over ranks). It is the reference the fast schedule is tested against.
- ``fused`` (ARCHITECTURE.md, "Step schedule"): the intact image is encoded (and projected to the fusion width)
  once and reused by ITM (negatives by index), MLM, ITC and SCL-text; the masked patches once; the text encoder
  runs once on [intact; MLM-masked; SCL-masked] (3B rows); the fusion encoder once on [ITM; MLM; SCL-text] (3B
  rows) and once on SCL-vision (its image sequence is shorter); the last fusion layer computes only the rows the
  heads read (frame CLS tokens; text CLS when MLM is not in the call). Every sample's computation is the same as
  in the naive passes, so losses and gradients agree to rounding (dropout off): ``tests/model/test_schedule.py``.
  FLOPs: ``python -m scl_fast.flops`` (paper preset, batch 16 images: 0.54 of the naive step).

All randomness of a step (MLM and SCL text masks, the kept patches, the ITM negatives) is drawn once by
``draw_step_inputs``, so both schedules can be fed the very same step.

Static shapes, no host synchronisation: every tensor of a step has a shape fixed by (B, F, L) and the config (the
MLM head reads a fixed number of positions, ``mlm_slots``, padded with the ignore index), and nothing reads a
device value on the host, so the step compiles once per frame count and can be captured in a CUDA graph
(``scl_fast/step.py``). A batch the loader padded to its fixed size marks its real rows in ``valid``: the padding
rows take part in no loss, as anchors or as negatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .config import ModelConfig
from .fusion import FusionEncoder
from .heads import ITCHead, ITMHead, MLMHead
from .text import TextEncoder
from .vision import VisionEncoder

Schedule = Literal["fused", "naive"]
LOSS_NAMES: tuple[str, ...] = ("itm", "mlm", "itc", "scl")


@dataclass
class StepOutput:
    """What one training step's forward returns."""

    loss: torch.Tensor
    """Scalar weighted total w_itm*ITM + w_mlm*MLM + w_itc*ITC + w_scl*SCL (what to backpropagate)."""
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    """Unweighted losses "itm", "mlm", "itc", "scl" (a loss with weight 0 is not computed and reported as 0)."""
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    """Detached 0-dim tensors: itm_acc, mlm_acc, temperature (no host sync here: ``.item()`` at log time)."""


@dataclass
class StepInputs:
    """All randomness of one step, drawn by ``SCLModel.draw_step_inputs``."""

    mlm_ids: torch.Tensor
    """(B, L) text with BERT's 80/10/10 masking applied."""
    mlm_positions: torch.Tensor
    """(K,) int64 flat indices into (B*L): first those of the tokens MLM predicts, in order, then filler rows;
    K = ``mlm_slots(B, L)`` whatever was drawn (the head runs on these rows only)."""
    mlm_targets: torch.Tensor
    """(K,) int64 original token ids at ``mlm_positions``, -100 (ignored) at the filler rows."""
    scl_ids: torch.Tensor
    """(B, L) text with ``scl_text_ratio`` of the real tokens replaced by [MASK] (SCL's masked-text pass)."""
    patch_noise: torch.Tensor
    """(B, P) random keys: the ``keep`` patch positions with the smallest keys survive (every frame alike)."""
    keep: int
    """Patch positions kept per frame by SCL's masked-vision pass."""
    itm_labels: torch.Tensor
    """(B,) int64, 1 = the pair keeps its own image, 0 = it gets a negative (exactly B // 2 negatives)."""
    itm_neg_index: torch.Tensor
    """(B,) int64 in-batch negative image of each pair, never its own index."""
    itm_noise: torch.Tensor
    """(B,) uniform [0, 1) keys for sampling hard negatives from ITC similarities (``itm_negatives="hard"``)."""
    valid: torch.Tensor | None = None
    """(B,) bool, False for the rows the loader padded the batch with (they join no loss); None = every row real."""

    def to(self, device: torch.device | str) -> StepInputs:
        """The same inputs on ``device`` (``"meta"`` keeps only shapes: the FLOP counter uses it)."""
        return StepInputs(**{f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
                             for f in fields(self)})


def mlm_slots(batch: int, length: int, p: float) -> int:
    """How many token positions the MLM head reads for a (B, L) batch: a fixed bound on the number MLM draws.

    Each real token is chosen with probability p (BERT), so the count is random; the bound is its mean for a batch
    of real tokens only, plus 6 standard deviations, plus 8 (a count above it has probability below 1e-9; the
    positions past it would then go unpredicted, their tokens still masked in the input). Fixed, so the step's
    shapes do not depend on the draw."""
    n = batch * length
    return min(n, math.ceil(n * p + 6 * math.sqrt(n * p * (1 - p)) + 8))


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 logits -> fp32 for the softmax of a loss; fp32/fp64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _nce(a: torch.Tensor, b: torch.Tensor, temperature: float | torch.Tensor, valid: torch.Tensor | None, *,
         detach_b: bool = False) -> torch.Tensor:
    """InfoNCE of gathered rows: the fused op, or for a padded batch the row-masked form (``valid`` gathered too)."""
    if valid is None:
        return ops.info_nce(a, b, temperature, detach_b=detach_b)
    gathered = ops.all_gather_with_grad(valid.to(a.dtype)) > 0.5
    return ops.info_nce_rows(a, b, temperature, gathered, detach_b=detach_b)


def _as_video(pixels: torch.Tensor) -> torch.Tensor:
    if pixels.dim() == 4:
        pixels = pixels[:, None]
    if pixels.dim() != 5 or pixels.shape[2] != 3:
        raise ValueError(f"pixels must be (B, F, 3, H, W) or (B, 3, H, W), got {tuple(pixels.shape)}")
    return pixels


class SCLModel(nn.Module):
    """Vision encoder + text encoder + METER fusion + ITC/ITM/MLM heads, trained with ITM, MLM, ITC and SCL."""

    def __init__(self, cfg: ModelConfig, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        # every submodule draws its from-scratch weights once, at the configured std
        kw = {"device": device, "dtype": dtype, "init_std": cfg.init_std}
        self.cfg = cfg
        backend = cfg.attn_backend
        self.vision = VisionEncoder(cfg.vision, attn_backend=backend, **kw)
        self.text = TextEncoder(cfg.text, attn_backend=backend, **kw)
        self.fusion = FusionEncoder(cfg.fusion, text_width=cfg.text.width, vision_width=cfg.vision.width,
                                    attn_backend=backend, **kw)
        w = cfg.fusion.width
        self.itc = ITCHead(w, cfg.loss, **kw)
        self.itm = ITMHead(w, **kw)
        tied = self.text.embeddings.word_embeddings.weight if cfg.tie_mlm_decoder else None
        self.mlm_head = MLMHead(w, cfg.text.vocab_size, act=cfg.fusion.act, eps=cfg.fusion.layer_norm_eps,
                                tied_weight=tied, **kw)
        if (cfg.init_text or cfg.init_vision) and torch.device(device or "cpu").type != "meta":
            from scl_fast.convert import init_from_hf  # optional dependency of the model: only when asked for

            init_from_hf(self, cfg.init_text, cfg.init_vision)

    # ----------------------------------------------------------------------------------------------------------
    # randomness of a step
    # ----------------------------------------------------------------------------------------------------------

    def draw_step_inputs(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         special_mask: torch.Tensor, *, generator: torch.Generator | None = None,
                         valid: torch.Tensor | None = None) -> StepInputs:
        """Draw every random choice of one step from ``generator`` (the global RNG when None), in a fixed order.

        Uses no parameter, so it runs on the inputs' device whatever device the model is on (the FLOP counter
        draws on the CPU and moves the result to ``meta``). Everything is drawn whatever the loss weights, so an
        ablation sees the same masks. ``pixels`` is read for its shape only. ``valid`` (B,) marks the real rows of
        a padded batch: the text of the others is never masked.
        """
        pixels = _as_video(pixels)
        b, length = input_ids.shape
        if special_mask.shape != (b, length) or attention_mask.shape != (b, length):
            raise ValueError(f"input_ids, attention_mask and special_mask must all be (B, L), got "
                             f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(special_mask.shape)}")
        dev = input_ids.device
        lc, tc = self.cfg.loss, self.cfg.text
        special = special_mask.bool() | ~attention_mask.bool()  # padding is never masked, whatever the caller says
        if valid is not None:
            special = special | ~valid.bool()[:, None]
        mlm_ids, labels = ops.mlm_mask(input_ids, special, p=lc.mlm_prob, replace=tuple(lc.mlm_replace),
                                       vocab_size=tc.vocab_size, mask_id=tc.mask_token_id, generator=generator)
        flat = labels.reshape(-1)
        # The chosen positions first, in order (a chosen token scores above every other), then fillers: a fixed
        # number of rows for the head, and no nonzero() (a host sync of its result's size).
        n = flat.shape[0]
        score = (flat != -100).to(torch.int64) * (2 * n) - torch.arange(n, device=dev)
        positions = score.topk(mlm_slots(b, length, lc.mlm_prob), sorted=True).indices
        scl_ids = ops.scl_text_mask(input_ids, special, ratio=lc.scl_text_ratio, mask_id=tc.mask_token_id,
                                    generator=generator)
        p = (pixels.shape[-2] // self.cfg.vision.patch_size) * (pixels.shape[-1] // self.cfg.vision.patch_size)
        keep = max(1, int(p * lc.scl_vision_keep))
        patch_noise = torch.rand(b, p, generator=generator, device=dev)
        perm = torch.randperm(b, generator=generator, device=dev)
        itm_labels = torch.ones(b, dtype=torch.long, device=dev)
        itm_labels[perm[: b // 2]] = 0
        offset = torch.randint(1, max(b, 2), (b,), generator=generator, device=dev)  # never 0: never itself
        itm_neg_index = (torch.arange(b, device=dev) + offset) % b
        itm_noise = torch.rand(b, generator=generator, device=dev)
        return StepInputs(mlm_ids=mlm_ids, mlm_positions=positions, mlm_targets=flat[positions], scl_ids=scl_ids,
                          patch_noise=patch_noise, keep=keep, itm_labels=itm_labels, itm_neg_index=itm_neg_index,
                          itm_noise=itm_noise, valid=None if valid is None else valid.bool())

    # ----------------------------------------------------------------------------------------------------------
    # the step
    # ----------------------------------------------------------------------------------------------------------

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                special_mask: torch.Tensor, *, generator: torch.Generator | None = None,
                schedule: Schedule | None = None, step_inputs: StepInputs | None = None,
                valid: torch.Tensor | None = None) -> StepOutput:
        """The losses of one pre-training step.

        Args:
            pixels: (B, F, 3, H, W) float images (F = 1) or videos; (B, 3, H, W) is taken as F = 1.
            input_ids: (B, L) int64.
            attention_mask: (B, L) bool, True = real token.
            special_mask: (B, L) bool, True = special or padding token (never masked).
            generator: source of the step's randomness (``draw_step_inputs``), global RNG when None; it must
                live on the inputs' device (a CUDA generator for CUDA inputs).
            schedule: "fused" or "naive"; None = ``cfg.schedule``.
            step_inputs: the step's randomness, drawn beforehand (then ``generator`` and ``valid`` are unused): how
                two schedules are given the very same step.
            valid: (B,) bool, False for rows that only pad the batch to its fixed size: they join no loss.

        Returns:
            ``StepOutput`` with the weighted total, the unweighted losses and detached metrics.
        """
        pixels = _as_video(pixels)
        b = pixels.shape[0]
        if input_ids.dim() != 2 or input_ids.shape[0] != b:
            raise ValueError(f"input_ids must be (B, L) with B={b} (pixels {tuple(pixels.shape)}), "
                             f"got {tuple(input_ids.shape)}")
        lc = self.cfg.loss
        weights = {"itm": lc.itm_weight, "mlm": lc.mlm_weight, "itc": lc.itc_weight, "scl": lc.scl_weight}
        if not any(w > 0 for w in weights.values()):
            raise ValueError(f"every loss weight is 0, nothing to train: {weights}")
        if lc.itm_weight > 0 and b < 2:
            raise ValueError(f"ITM needs at least 2 pairs per batch (in-batch negatives), got B={b}")
        schedule = self.cfg.schedule if schedule is None else schedule
        if step_inputs is None:
            step_inputs = self.draw_step_inputs(pixels, input_ids, attention_mask, special_mask, generator=generator,
                                                valid=valid)
        mask = attention_mask.bool()
        if schedule == "fused":
            losses, metrics = self._fused(pixels, input_ids, mask, step_inputs)
        elif schedule == "naive":
            losses, metrics = self._naive(pixels, input_ids, mask, step_inputs)
        else:
            raise ValueError(f"schedule must be 'fused' or 'naive', got {schedule!r}")
        total = sum(weights[k] * v for k, v in losses.items())
        zero = total.detach().new_zeros(())
        metrics["temperature"] = self.itc.temperature.detach()[0].clone()
        return StepOutput(loss=total, losses={k: losses.get(k, zero) for k in LOSS_NAMES}, metrics=metrics)

    def _todo(self) -> tuple[bool, bool, bool, bool, bool]:
        lc = self.cfg.loss
        itm, mlm, itc, scl = lc.itm_weight > 0, lc.mlm_weight > 0, lc.itc_weight > 0, lc.scl_weight > 0
        return itm, mlm, itc, scl, itm and lc.itm_negatives == "hard"

    def _fused(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, s: StepInputs
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The shared-pass schedule (ARCHITECTURE.md, "Step schedule")."""
        do_itm, do_mlm, do_itc, do_scl, hard = self._todo()
        b, nf = pixels.shape[:2]
        losses: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        image = self.fusion.project_image(self.vision(pixels))  # (B, F*(1+P), W): the one intact-image pass

        texts = {"intact": ids} if (do_itm or do_itc or do_scl) else {}
        if do_mlm:
            texts["mlm"] = s.mlm_ids
        if do_scl:
            texts["scl"] = s.scl_ids
        n = len(texts)
        encoded = self.fusion.project_text(self.text(torch.cat(list(texts.values())), mask.repeat(n, 1)))
        text = dict(zip(texts, encoded.split(b), strict=True))  # each (B, L, W)

        t_itc = v_itc = None
        if do_itc or hard:
            t_itc, v_itc = self._itc_features(text["intact"], image, nf)
            if do_itc:
                losses["itc"] = self._itc_loss(t_itc, v_itc, s.valid)

        # ITM, MLM and SCL-text fusion inputs have the same shapes: one call over their concatenation
        segments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if do_itm:
            segments["itm"] = (text["intact"], image[self._itm_index(s, t_itc, v_itc)])
        if do_mlm:
            segments["mlm"] = (text["mlm"], image)
        if do_scl:
            segments["scl_text"] = (text["scl"], image)
        if segments:
            k = len(segments)
            # the heads read the image stream's frame CLS rows only (ITM pooler, SCL targets), and the text
            # stream's CLS only unless MLM is in the call
            xt, xv = self.fusion(torch.cat([t for t, _ in segments.values()]), mask.repeat(k, 1),
                                 torch.cat([v for _, v in segments.values()]),
                                 text_rows=None if do_mlm else slice(0, 1), image_rows=slice(0, nf))
            fused = dict(zip(segments, zip(xt.split(b), xv.split(b), strict=True), strict=True))
        if do_itm:
            losses["itm"], metrics["itm_acc"] = self._itm_loss(*fused["itm"], nf, s.itm_labels, s.valid)
        if do_mlm:
            losses["mlm"], metrics["mlm_acc"] = self._mlm_loss(fused["mlm"][0], s)
        if do_scl:
            masked = self.fusion.project_image(self.vision(pixels, mask_noise=s.patch_noise, keep=s.keep))
            mt, mv = self.fusion(text["intact"], mask, masked, text_rows=slice(0, 1),
                                 image_rows=slice(0, nf))  # SCL-vision: (B, 1, W), (B, F, W)
            st, sv = fused["scl_text"]
            losses["scl"] = self._scl_loss(metrics, s.valid, st[:, 0], mt[:, 0], mv[:, :nf], sv[:, :nf])
        return losses, metrics

    def _naive(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, s: StepInputs
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The release's five passes, each encoding its own inputs from scratch (with the two fixes)."""
        do_itm, do_mlm, do_itc, do_scl, hard = self._todo()
        nf = pixels.shape[1]
        losses: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}

        def text(x: torch.Tensor) -> torch.Tensor:
            return self.fusion.project_text(self.text(x, mask))

        def image(px: torch.Tensor, **kw: torch.Tensor | int) -> torch.Tensor:
            return self.fusion.project_image(self.vision(px, **kw))

        t_itc = v_itc = None
        if do_itc or hard:  # pass: ITC (unimodal)
            with torch.set_grad_enabled(torch.is_grad_enabled() and do_itc):
                t_itc, v_itc = self._itc_features(text(ids), image(pixels), nf)
            if do_itc:
                losses["itc"] = self._itc_loss(t_itc, v_itc, s.valid)
        if do_itm:  # pass: ITM
            xt, xv = self.fusion(text(ids), mask, image(pixels[self._itm_index(s, t_itc, v_itc)]))
            losses["itm"], metrics["itm_acc"] = self._itm_loss(xt, xv, nf, s.itm_labels, s.valid)
        if do_mlm:  # pass: MLM
            xt, _ = self.fusion(text(s.mlm_ids), mask, image(pixels))
            losses["mlm"], metrics["mlm_acc"] = self._mlm_loss(xt, s)
        if do_scl:  # passes: SCL-vision, SCL-text
            mt, mv = self.fusion(text(ids), mask, image(pixels, mask_noise=s.patch_noise, keep=s.keep))
            st, sv = self.fusion(text(s.scl_ids), mask, image(pixels))
            losses["scl"] = self._scl_loss(metrics, s.valid, st[:, 0], mt[:, 0], mv[:, :nf], sv[:, :nf])
        return losses, metrics

    # ----------------------------------------------------------------------------------------------------------
    # losses (shared by both schedules)
    # ----------------------------------------------------------------------------------------------------------

    def _itc_features(self, text: torch.Tensor, image: torch.Tensor, frames: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """ITC projections of the unimodal CLS (after the modality Linear): text[:, 0] and, for a video, the mean
        of the frame CLS tokens -> (B, itc_dim) each, not normalised (info_nce normalises)."""
        return self.itc.text(text[:, 0]), self.itc.image(image[:, :frames].mean(dim=1))

    def _itc_loss(self, t: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        return _nce(ops.all_gather_with_grad(v), ops.all_gather_with_grad(t), self.itc.temp(), valid)

    def _itm_index(self, s: StepInputs, t_itc: torch.Tensor | None, v_itc: torch.Tensor | None) -> torch.Tensor:
        """(B,) the image each ITM pair is fused with: its own, or (label 0) an in-batch negative, uniform or
        (``itm_negatives="hard"``) sampled in proportion to softmax(sim(text_i, image_j) / T) over j != i."""
        b = s.itm_labels.shape[0]
        own = torch.arange(b, device=s.itm_labels.device)
        if self.cfg.loss.itm_negatives == "hard":
            with torch.no_grad():
                t = F.normalize(t_itc.float(), dim=-1)
                v = F.normalize(v_itc.float(), dim=-1)
                w = torch.softmax(t @ v.T / self.itc.temperature.float(), dim=1) + 1e-5  # (B, B)
                w = w.masked_fill(torch.eye(b, dtype=torch.bool, device=w.device), 0.0)
                if s.valid is not None:  # a padding row is never a negative
                    w = w.masked_fill(~s.valid[None, :], 0.0)
                cdf = w.cumsum(dim=1)
                neg = torch.searchsorted(cdf, (s.itm_noise.float() * cdf[:, -1])[:, None], right=True).squeeze(1)
                neg = neg.clamp_max(b - 1)
                neg = torch.where(neg == own, (neg + 1) % b, neg)  # rounding at the last bin: never itself
        else:
            neg = s.itm_neg_index
        return torch.where(s.itm_labels.bool(), own, neg)

    def _itm_loss(self, text: torch.Tensor, image: torch.Tensor, frames: int, labels: torch.Tensor,
                  valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.itm(text, image, frames)  # (B, 2)
        right = (logits.detach().argmax(dim=-1) == labels).float()
        loss = F.cross_entropy(_upcast(logits), labels, reduction="none")
        return ops.row_mean(loss, valid), ops.row_mean(right, valid)

    def _mlm_loss(self, text: torch.Tensor, s: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy at the masked positions only: the head reads the K = ``mlm_slots`` rows of
        ``mlm_positions`` (the masked ones and fillers, never the other B*L - K), the fillers ignored. A batch of
        tiny captions can mask nothing: then 0, keeping the graph."""
        hidden = text.flatten(0, 1).index_select(0, s.mlm_positions)  # (K, W)
        logits = self.mlm_head(hidden)  # (K, vocab)
        counted = s.mlm_targets != -100
        n = counted.sum().clamp_min(1)
        loss = F.cross_entropy(_upcast(logits), s.mlm_targets, ignore_index=-100, reduction="sum") / n
        acc = ((logits.detach().argmax(dim=-1) == s.mlm_targets) & counted).sum() / n
        return loss, acc

    def _scl_terms(self, valid: torch.Tensor | None, t_rec: torch.Tensor, t_tgt: torch.Tensor, v_rec: torch.Tensor,
                   v_tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(NCE(t~, sg(t)), mean_f NCE(v~_f, sg(v_f))); t (B, W), v (B, F, W) raw fusion outputs. Features are
        normalised over the feature dim inside the op (fix 1 of SCL_METHOD.md), targets detached."""
        lc = self.cfg.loss

        def recover(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            a, b = a.contiguous(), b.detach().contiguous()
            if lc.scl_loss == "cosine":
                if valid is None:
                    return ops.cosine_recovery(a, b)
                dtype = torch.promote_types(a.dtype, torch.float32)
                return ops.row_mean(1.0 - (F.normalize(a.to(dtype), dim=-1) * F.normalize(b.to(dtype), dim=-1)).sum(-1),
                                 valid)
            return _nce(ops.all_gather_with_grad(a), ops.all_gather_with_grad(b), lc.scl_temperature, valid,
                        detach_b=True)

        frames = v_rec.shape[1]
        vision = sum(recover(v_rec[:, f], v_tgt[:, f]) for f in range(frames)) / frames
        return recover(t_rec, t_tgt), vision

    def _scl_loss(self, metrics: dict[str, torch.Tensor], valid: torch.Tensor | None, *features: torch.Tensor
                  ) -> torch.Tensor:
        """L_SCL = text term + vision term (``_scl_terms``); both terms also go to ``metrics``."""
        text, vision = self._scl_terms(valid, *features)
        metrics["scl_text"], metrics["scl_vision"] = text.detach(), vision.detach()
        return text + vision

    # ----------------------------------------------------------------------------------------------------------
    # inference helpers (evaluation)
    # ----------------------------------------------------------------------------------------------------------

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) or (B, 3, H, W) -> (B, itc_dim) L2-normalised ITC embedding (video: mean frame CLS)."""
        pixels = _as_video(pixels)
        nf = pixels.shape[1]
        cls = self.fusion.project_image(self.vision(pixels)[:, :nf])  # (B, F, W): only the CLS rows are needed
        return F.normalize(self.itc.image(cls.mean(dim=1)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids and mask (True = real) -> (B, itc_dim) L2-normalised ITC embedding."""
        cls = self.fusion.project_text(self.text(input_ids, attention_mask.bool())[:, 0])  # (B, W)
        return F.normalize(self.itc.text(cls), dim=-1)

    def itm_scores(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                   ) -> torch.Tensor:
        """(B,) matched logit of ITM for each (pixels[i], text[i]) pair (re-ranking: higher = better match)."""
        return self.itm.classifier(self.pooled_features(pixels, input_ids, attention_mask))[:, 1]

    def pooled_features(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                        ) -> torch.Tensor:
        """(B, 2W) global feature of each (pixels[i], text[i]) pair after fusion: concat(Pooler_t(text[:, 0]),
        Pooler_v(mean of the frame CLS tokens)), what ITM and the downstream heads classify (SCL_METHOD.md)."""
        pixels = _as_video(pixels)
        mask = attention_mask.bool()
        text = self.fusion.project_text(self.text(input_ids, mask))
        return self.fuse_pooled(text, mask, self.fusion.project_image(self.vision(pixels)), pixels.shape[1])

    def fuse_pooled(self, text: torch.Tensor, mask: torch.Tensor, image: torch.Tensor, frames: int) -> torch.Tensor:
        """Projected text (B, L, W) with its mask and projected image tokens (B, F*(1+P), W) -> the (B, 2W) pooled
        feature; the last fusion layer computes only the rows the poolers read."""
        xt, xv = self.fusion(text, mask, image, text_rows=slice(0, 1), image_rows=slice(0, frames))
        return self.itm.pool(xt, xv, frames)

    # ----------------------------------------------------------------------------------------------------------
    # optimisation
    # ----------------------------------------------------------------------------------------------------------

    def param_groups(self, lr: float, weight_decay: float, head_lr_mult: float) -> list[dict]:
        """AdamW groups: encoders at ``lr``, fusion and heads at ``lr * head_lr_mult`` (the paper: x5); no weight
        decay on biases, norms, embeddings and the temperature (every parameter with < 2 dims or an
        "embedding" in its name). Empty groups are left out; every trainable parameter is in exactly one group."""
        encoders = {id(p) for m in (self.vision, self.text) for p in m.parameters()}
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            decay = p.ndim >= 2 and "embedding" not in name
            groups.setdefault((id(p) in encoders, decay), []).append(p)
        out = []
        for (is_encoder, decay), params in sorted(groups.items(), reverse=True):
            out.append({"params": params, "lr": lr if is_encoder else lr * head_lr_mult,
                        "weight_decay": weight_decay if decay else 0.0,
                        "name": f"{'encoders' if is_encoder else 'heads'}_{'decay' if decay else 'no_decay'}"})
        return out
