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
"""

from __future__ import annotations

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
    """(M,) int64 flat indices into (B*L) of the tokens MLM predicts (the head runs on these rows only)."""
    mlm_targets: torch.Tensor
    """(M,) int64 original token ids at ``mlm_positions``."""
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

    def to(self, device: torch.device | str) -> StepInputs:
        """The same inputs on ``device`` (``"meta"`` keeps only shapes: the FLOP counter uses it)."""
        return StepInputs(**{f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
                             for f in fields(self)})


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 logits -> fp32 for the softmax of a loss; fp32/fp64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


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
                         special_mask: torch.Tensor, *, generator: torch.Generator | None = None) -> StepInputs:
        """Draw every random choice of one step from ``generator`` (the global RNG when None), in a fixed order.

        Uses no parameter, so it runs on the inputs' device whatever device the model is on (the FLOP counter
        draws on the CPU and moves the result to ``meta``). Everything is drawn whatever the loss weights, so an
        ablation sees the same masks. ``pixels`` is read for its shape only.
        """
        pixels = _as_video(pixels)
        b, length = input_ids.shape
        if special_mask.shape != (b, length) or attention_mask.shape != (b, length):
            raise ValueError(f"input_ids, attention_mask and special_mask must all be (B, L), got "
                             f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(special_mask.shape)}")
        dev = input_ids.device
        lc, tc = self.cfg.loss, self.cfg.text
        special = special_mask.bool() | ~attention_mask.bool()  # padding is never masked, whatever the caller says
        mlm_ids, labels = ops.mlm_mask(input_ids, special, p=lc.mlm_prob, replace=tuple(lc.mlm_replace),
                                       vocab_size=tc.vocab_size, mask_id=tc.mask_token_id, generator=generator)
        flat = labels.reshape(-1)
        positions = (flat != -100).nonzero().squeeze(1)  # (M,) the one host sync of the step's randomness
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
                          itm_noise=itm_noise)

    # ----------------------------------------------------------------------------------------------------------
    # the step
    # ----------------------------------------------------------------------------------------------------------

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                special_mask: torch.Tensor, *, generator: torch.Generator | None = None,
                schedule: Schedule | None = None, step_inputs: StepInputs | None = None) -> StepOutput:
        """The losses of one pre-training step.

        Args:
            pixels: (B, F, 3, H, W) float images (F = 1) or videos; (B, 3, H, W) is taken as F = 1.
            input_ids: (B, L) int64.
            attention_mask: (B, L) bool, True = real token.
            special_mask: (B, L) bool, True = special or padding token (never masked).
            generator: source of the step's randomness (``draw_step_inputs``), global RNG when None; it must
                live on the inputs' device (a CUDA generator for CUDA inputs).
            schedule: "fused" or "naive"; None = ``cfg.schedule``.
            step_inputs: the step's randomness, drawn beforehand (then ``generator`` is unused): how two schedules
                are given the very same step.

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
            step_inputs = self.draw_step_inputs(pixels, input_ids, attention_mask, special_mask, generator=generator)
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
                losses["itc"] = self._itc_loss(t_itc, v_itc)

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
            losses["itm"], metrics["itm_acc"] = self._itm_loss(*fused["itm"], nf, s.itm_labels)
        if do_mlm:
            losses["mlm"], metrics["mlm_acc"] = self._mlm_loss(fused["mlm"][0], s)
        if do_scl:
            masked = self.fusion.project_image(self.vision(pixels, mask_noise=s.patch_noise, keep=s.keep))
            mt, mv = self.fusion(text["intact"], mask, masked, text_rows=slice(0, 1),
                                 image_rows=slice(0, nf))  # SCL-vision: (B, 1, W), (B, F, W)
            st, sv = fused["scl_text"]
            losses["scl"] = self._scl_loss(metrics, st[:, 0], mt[:, 0], mv[:, :nf], sv[:, :nf])
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
                losses["itc"] = self._itc_loss(t_itc, v_itc)
        if do_itm:  # pass: ITM
            xt, xv = self.fusion(text(ids), mask, image(pixels[self._itm_index(s, t_itc, v_itc)]))
            losses["itm"], metrics["itm_acc"] = self._itm_loss(xt, xv, nf, s.itm_labels)
        if do_mlm:  # pass: MLM
            xt, _ = self.fusion(text(s.mlm_ids), mask, image(pixels))
            losses["mlm"], metrics["mlm_acc"] = self._mlm_loss(xt, s)
        if do_scl:  # passes: SCL-vision, SCL-text
            mt, mv = self.fusion(text(ids), mask, image(pixels, mask_noise=s.patch_noise, keep=s.keep))
            st, sv = self.fusion(text(s.scl_ids), mask, image(pixels))
            losses["scl"] = self._scl_loss(metrics, st[:, 0], mt[:, 0], mv[:, :nf], sv[:, :nf])
        return losses, metrics

    # ----------------------------------------------------------------------------------------------------------
    # losses (shared by both schedules)
    # ----------------------------------------------------------------------------------------------------------

    def _itc_features(self, text: torch.Tensor, image: torch.Tensor, frames: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """ITC projections of the unimodal CLS (after the modality Linear): text[:, 0] and, for a video, the mean
        of the frame CLS tokens -> (B, itc_dim) each, not normalised (info_nce normalises)."""
        return self.itc.text(text[:, 0]), self.itc.image(image[:, :frames].mean(dim=1))

    def _itc_loss(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return ops.info_nce(ops.all_gather_with_grad(v), ops.all_gather_with_grad(t), self.itc.temp())

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
                cdf = w.cumsum(dim=1)
                neg = torch.searchsorted(cdf, (s.itm_noise.float() * cdf[:, -1])[:, None], right=True).squeeze(1)
                neg = neg.clamp_max(b - 1)
                neg = torch.where(neg == own, (neg + 1) % b, neg)  # rounding at the last bin: never itself
        else:
            neg = s.itm_neg_index
        return torch.where(s.itm_labels.bool(), own, neg)

    def _itm_loss(self, text: torch.Tensor, image: torch.Tensor, frames: int, labels: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.itm(text, image, frames)  # (B, 2)
        acc = (logits.detach().argmax(dim=-1) == labels).float().mean()
        return F.cross_entropy(_upcast(logits), labels), acc

    def _mlm_loss(self, text: torch.Tensor, s: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy at the M masked positions only (the head never sees the other B*L - M rows)."""
        if s.mlm_positions.numel() == 0:  # a batch of tiny captions can mask nothing: a zero that keeps the graph
            zero = text.sum() * 0.0
            return zero, zero.detach()
        hidden = text.flatten(0, 1).index_select(0, s.mlm_positions)  # (M, W)
        logits = self.mlm_head(hidden)  # (M, vocab)
        acc = (logits.detach().argmax(dim=-1) == s.mlm_targets).float().mean()
        return F.cross_entropy(_upcast(logits), s.mlm_targets), acc

    def _scl_terms(self, t_rec: torch.Tensor, t_tgt: torch.Tensor, v_rec: torch.Tensor, v_tgt: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(NCE(t~, sg(t)), mean_f NCE(v~_f, sg(v_f))); t (B, W), v (B, F, W) raw fusion outputs. Features are
        normalised over the feature dim inside the op (fix 1 of SCL_METHOD.md), targets detached."""
        lc = self.cfg.loss

        def recover(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            a, b = a.contiguous(), b.detach().contiguous()
            if lc.scl_loss == "cosine":
                return ops.cosine_recovery(a, b)
            return ops.info_nce(ops.all_gather_with_grad(a), ops.all_gather_with_grad(b), lc.scl_temperature,
                                detach_b=True)

        frames = v_rec.shape[1]
        vision = sum(recover(v_rec[:, f], v_tgt[:, f]) for f in range(frames)) / frames
        return recover(t_rec, t_tgt), vision

    def _scl_loss(self, metrics: dict[str, torch.Tensor], *features: torch.Tensor) -> torch.Tensor:
        """L_SCL = text term + vision term (``_scl_terms``); both terms also go to ``metrics``."""
        text, vision = self._scl_terms(*features)
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
