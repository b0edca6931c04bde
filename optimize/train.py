"""Train a registry architecture into a mopt checkpoint, on a folder of image/alpha pairs or synthetic composites.

The bundled ``checkpoints/cvunet.pth`` is made by :func:`checkpoint_from_training`; it must produce real
mattes, because random weights output a flat ~0.5 that would hide any precision error in later comparisons.
Training is deterministic for a given seed and thread count: samples are pure functions of
``(seed, index)``, augmentation draws from ``(seed, epoch, index)``, and the DataLoader shuffles with its own
seeded generator in the main process.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import nn
from torch.utils.data import DataLoader, Dataset

import architectures
from optimize.checkpoint import IMAGENET, Normalization, load_checkpoint, save_checkpoint
from optimize.errors import MoptError
from optimize.images import IMAGE_SUFFIXES, load_rgb
from optimize.synthetic import DEFAULT_VALIDATION_COUNT, VALIDATION_SIZE, synthetic_sample, validation_set

DEFAULT_ARCH = "cvunet-mbv3-large"
# Samples are generated (or folder images resized) this much larger than the crop, so random crops move the
# object around the frame and sometimes cut it at the border, as in real photos.
CROP_MARGIN = 1.25
# Folder data: this fraction of pairs (at least one) is held out for validation when there are 10 or more.
HOLDOUT_FRACTION = 0.1

Sample = tuple[np.ndarray, np.ndarray]  # (H x W x 3 uint8 RGB, H x W float32 alpha in [0, 1])


@dataclass(frozen=True)
class EpochReport:
    """What one epoch achieved; ``val_iou`` is the mean per-image IoU of ``alpha > 0.5``."""

    epoch: int
    epochs: int
    train_loss: float
    val_iou: float
    val_mad: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """The written checkpoint and how training went."""

    path: Path
    arch: str
    val_iou: float
    val_mad: float
    val_count: int
    seconds: float
    history: list[EpochReport] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- data


def _load_alpha(path: Path) -> np.ndarray:
    """An alpha matte file -> H x W float32 in [0, 1]; 16-bit files keep their precision."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                values = np.asarray(image, dtype=np.float32)
                return np.clip(values / (65535.0 if values.max() > 255 else 255.0), 0.0, 1.0)
            if image.mode in ("RGBA", "LA", "PA"):
                # A cut-out saved with transparency: the matte is its alpha channel.
                image = image.getchannel("A")
            return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except FileNotFoundError as exc:
        raise MoptError(f"alpha matte {path} does not exist") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MoptError(f"cannot read alpha matte {path}: {exc}") from exc


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    by_stem: dict[str, Path] = {}
    for p in files:
        if p.stem in by_stem:
            raise MoptError(
                f"{folder} holds two files with the stem {p.stem!r} ({by_stem[p.stem].name}, {p.name}); keep one"
            )
        by_stem[p.stem] = p
    return by_stem


def find_pairs(data_dir: str | Path) -> list[tuple[Path, Path]]:
    """The ``(image, alpha)`` file pairs of a data folder laid out as ``DIR/images/*`` + ``DIR/alphas/*``.

    Files are matched by stem (``images/cat.jpg`` with ``alphas/cat.png``).

    Raises:
        MoptError: a sub-folder is missing, there are no images, or some file has no partner.
    """
    data_dir = Path(data_dir)
    images_dir, alphas_dir = data_dir / "images", data_dir / "alphas"
    for sub in (images_dir, alphas_dir):
        if not sub.is_dir():
            raise MoptError(f"training folder {data_dir} has no {sub.name}/ sub-folder; lay it out as "
                            f"{data_dir}/images/NAME.jpg + {data_dir}/alphas/NAME.png")
    images, alphas = _files_by_stem(images_dir), _files_by_stem(alphas_dir)
    if not images:
        raise MoptError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}; add image/alpha pairs")
    only_images, only_alphas = sorted(set(images) - set(alphas)), sorted(set(alphas) - set(images))
    if only_images or only_alphas:
        parts = []
        if only_images:
            parts.append(f"{len(only_images)} image(s) without an alpha in {alphas_dir} (e.g. {only_images[0]!r})")
        if only_alphas:
            parts.append(f"{len(only_alphas)} alpha(s) without an image in {images_dir} (e.g. {only_alphas[0]!r})")
        raise MoptError(f"unmatched training pairs: {'; '.join(parts)}; every image needs an alpha with the same stem")
    return [(images[stem], alphas[stem]) for stem in sorted(images)]


def _fit_to_crop(rgb: np.ndarray, alpha: np.ndarray, crop: tuple[int, int]) -> Sample:
    """Resize so that the image just covers ``crop * CROP_MARGIN``: big photos would otherwise yield crops of
    texture with no object boundary, and small ones could not be cropped at all."""
    h, w = alpha.shape
    scale = max(crop[0] * CROP_MARGIN / h, crop[1] * CROP_MARGIN / w)
    size = (max(crop[1], round(w * scale)), max(crop[0], round(h * scale)))  # PIL order: (W, H)
    if size == (w, h):
        return rgb, alpha
    rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
    alpha = np.asarray(Image.fromarray(alpha.astype(np.float32)).resize(size, Image.BILINEAR))
    return rgb, np.clip(alpha, 0.0, 1.0).astype(np.float32)


def load_pairs(data_dir: str | Path) -> list[Sample]:
    """Read every pair of a data folder (see :func:`find_pairs`) at full size.

    Raises:
        MoptError: layout problems, an unreadable file, or an alpha whose size differs from its image.
    """
    samples = []
    for image_path, alpha_path in find_pairs(data_dir):
        rgb, alpha = load_rgb(image_path), _load_alpha(alpha_path)
        if rgb.shape[:2] != alpha.shape:
            raise MoptError(f"{alpha_path} is {alpha.shape[1]}x{alpha.shape[0]} (WxH) but its image {image_path} is "
                            f"{rgb.shape[1]}x{rgb.shape[0]}; resize the alpha to match")
        samples.append((rgb, alpha))
    return samples


class AugmentedPairs(Dataset):
    """Training view of in-memory pairs: random crop, horizontal flip, mild brightness/contrast jitter.

    Randomness comes from ``(seed, epoch, index)`` only, so a batch is the same whatever the worker layout;
    set :attr:`epoch` before each epoch. Vertical flips are left out on purpose: photos have an up.
    """

    def __init__(
        self, samples: Sequence[Sample], crop: tuple[int, int], normalization: Normalization, seed: int = 0
    ) -> None:
        # uint8 alphas halve the memory of a few thousand cached samples; 1/255 is the precision of any PNG matte.
        self.images = [rgb for rgb, _ in samples]
        self.alphas = [np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8) for _, a in samples]
        self.crop, self.seed, self.epoch = crop, seed, 0
        self.mean = np.asarray(normalization.mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(normalization.std, dtype=np.float32).reshape(3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index]))
        rgb, alpha = self.images[index], self.alphas[index]
        ch, cw = self.crop
        h, w = alpha.shape
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        rgb, alpha = rgb[top : top + ch, left : left + cw], alpha[top : top + ch, left : left + cw]
        if rng.random() < 0.5:
            rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
        x = rgb.transpose(2, 0, 1).astype(np.float32) / 255.0  # 3,h,w
        x = np.clip((x - 0.5) * rng.uniform(0.85, 1.15) + 0.5 + rng.uniform(-0.08, 0.08), 0.0, 1.0)
        x = (x - self.mean) / self.std
        y = alpha[None].astype(np.float32) / 255.0  # 1,h,w
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))


def synthetic_training_samples(
    count: int,
    crop: tuple[int, int],
    seed: int = 0,
    max_scale: float = 1.0,
    on_sample: Callable[[int, int], None] | None = None,
) -> list[Sample]:
    """``count`` synthetic composites to cache for all epochs.

    Sample ``i`` is rendered at ``crop * CROP_MARGIN * s_i``, with ``s_i`` log-uniform in ``[1, max_scale]``
    and drawn from ``(seed, i)`` alone. A scene scales as a whole, so large ``s_i`` shows the model the big
    objects, wide soft edges and fine textures of high-resolution inputs, which a fixed scale never does.
    """
    if count <= 0:
        raise MoptError(f"--synthetic needs a positive number of samples, got {count}")
    if not 1.0 <= max_scale <= 8.0:
        raise MoptError(f"--max-scale must be between 1 and 8, got {max_scale}")
    samples = []
    for i in range(count):
        scale = CROP_MARGIN
        if max_scale > 1.0:
            scale *= math.exp(np.random.default_rng([seed, i, 1]).uniform(0.0, math.log(max_scale)))
        samples.append(synthetic_sample(i, round(crop[0] * scale), round(crop[1] * scale), seed))
        if on_sample is not None:
            on_sample(i + 1, count)
    return samples


# ---------------------------------------------------------------------------------------------- loss, metrics


def matting_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 + 0.5 * BCE + gradient L1 on N x 1 x H x W alphas.

    L1 is the matting metric itself (MAD) but gives the same push to every wrong pixel, so early training
    crawls; BCE punishes confidently wrong pixels hard and settles the object body (what IoU measures) fast.
    The gradient term compares finite differences, which L1 barely sees on thin strands and soft ramps
    because they cover few pixels; it keeps edges as sharp or as soft as the ground truth.
    """
    l1 = (pred - target).abs().mean()
    # The model ends in a sigmoid, so BCE runs on probabilities; PyTorch clamps log(0) to -100, no NaN.
    bce = F.binary_cross_entropy(pred, target)
    grad_x = (pred[..., :, 1:] - pred[..., :, :-1]) - (target[..., :, 1:] - target[..., :, :-1])
    grad_y = (pred[..., 1:, :] - pred[..., :-1, :]) - (target[..., 1:, :] - target[..., :-1, :])
    grad = grad_x.abs().mean() + grad_y.abs().mean()
    return l1 + 0.5 * bce + grad


@torch.no_grad()
def predict_alpha(
    model: nn.Module, images: Sequence[np.ndarray], normalization: Normalization = IMAGENET, batch_size: int = 16
) -> list[np.ndarray]:
    """Alphas (H x W float32) for H x W x 3 uint8 images, in eval mode; equal-sized neighbours share a batch."""
    was_training = model.training
    model.eval()  # BatchNorm must use its running statistics, not the batch's
    device = next(model.parameters()).device
    mean = torch.tensor(normalization.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(normalization.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    out: list[np.ndarray] = []
    try:
        i = 0
        while i < len(images):
            j = i + 1
            while j < len(images) and j - i < batch_size and images[j].shape == images[i].shape:
                j += 1
            batch = torch.from_numpy(np.stack(images[i:j])).to(device).permute(0, 3, 1, 2).float() / 255.0  # N,3,H,W
            alpha = model((batch - mean) / std)  # N,1,H,W
            out.extend(a[0] for a in alpha.cpu().numpy().astype(np.float32))
            i = j
    finally:
        model.train(was_training)
    return out


def evaluate_iou(
    model: nn.Module,
    samples: Sequence[Sample],
    normalization: Normalization = IMAGENET,
    threshold: float = 0.5,
    batch_size: int = 16,
) -> dict[str, float]:
    """Matte quality of ``model`` on ``(rgb, alpha)`` samples.

    Args:
        model: a matting model (switched to eval mode for the call, then restored).
        samples: ``(H x W x 3 uint8 RGB, H x W float alpha)`` pairs; sizes may differ.
        normalization: the model's input normalization.
        threshold: alpha above it counts as foreground for IoU.
        batch_size: images per forward pass.

    Returns:
        ``{"iou": mean per-image IoU of alpha > threshold, "mad": mean |pred - true| over all pixels,
        "count": number of samples}``; an image where both masks are empty has IoU 1.
    """
    if not samples:
        raise MoptError("evaluate_iou needs at least one sample")
    preds = predict_alpha(model, [rgb for rgb, _ in samples], normalization, batch_size)
    return scores_of_predictions(preds, [alpha for _, alpha in samples], threshold)


def scores_of_predictions(
    preds: Sequence[np.ndarray], trues: Sequence[np.ndarray], threshold: float = 0.5
) -> dict[str, float]:
    """:func:`evaluate_iou`'s scores for alphas already predicted (``H x W`` each, sizes may differ)."""
    ious, abs_sum, pixels = [], 0.0, 0
    for pred, true in zip(preds, trues, strict=True):
        p, t = pred > threshold, true > threshold
        union = np.logical_or(p, t).sum()
        ious.append(1.0 if union == 0 else float(np.logical_and(p, t).sum() / union))
        abs_sum += float(np.abs(pred - true).sum())
        pixels += true.size
    return {"iou": float(np.mean(ious)), "mad": abs_sum / pixels, "count": len(preds)}


# ---------------------------------------------------------------------------------------------- training


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Decaying BatchNorm scales and biases only shrinks them toward zero with no regularising benefit.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def checkpoint_from_training(
    output: str | Path,
    *,
    data: str | Path | None = None,
    synthetic: int | None = None,
    arch: str | None = None,
    size: tuple[int, int] = (192, 192),
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    threads: int | None = None,
    init: str | Path | None = None,
    validation: int = DEFAULT_VALIDATION_COUNT,
    max_scale: float = 1.0,
    command: str | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_data: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train a matting model and write it as a mopt checkpoint.

    Args:
        output: checkpoint path (``.pth`` or ``.safetensors``); written once, atomically, after the last epoch.
        data: folder with ``images/`` and ``alphas/`` matched by stem; exclusive with ``synthetic``.
        synthetic: number of built-in synthetic training composites; exclusive with ``data``.
        arch: registry architecture; defaults to ``init``'s, else ``cvunet-mbv3-large``.
        size: ``(height, width)`` of the training crops (validation images are 192x192).
        epochs: passes over the training samples.
        batch_size: crops per optimizer step.
        lr: peak learning rate of the one-cycle schedule (AdamW).
        weight_decay: AdamW decay on weights (not on norms and biases).
        seed: seeds data generation, augmentation, shuffling and initialisation.
        threads: CPU threads for torch (``None`` keeps torch's default); restored afterwards.
        init: a checkpoint to start from (fine-tuning or resuming); its normalization is kept.
        validation: size of the synthetic validation set (synthetic data); folder data holds out pairs instead.
        max_scale: synthetic data: render samples at up to this multiple of the base size (see
            :func:`synthetic_training_samples`).
        command: the command line to record in the checkpoint.
        on_step: called after every step with ``(step, total_steps, loss)``.
        on_epoch: called after every epoch with its :class:`EpochReport`.
        on_data: called while synthetic samples are generated with ``(done, total)``.

    Raises:
        MoptError: bad options or bad data; nothing is written then.
    """
    if (data is None) == (synthetic is None):
        raise MoptError("give exactly one training source: --data DIR (images/ + alphas/) or --synthetic N")
    if epochs <= 0 or batch_size <= 0 or lr <= 0 or validation <= 0:
        raise MoptError(f"epochs ({epochs}), batch ({batch_size}), lr ({lr}) and validation ({validation}) "
                        "must all be positive")
    if data is not None and max_scale != 1.0:
        raise MoptError("--max-scale applies to --synthetic data only; resize a --data folder's images instead")
    if threads is not None and threads <= 0:
        raise MoptError(f"--threads must be positive, got {threads}")
    if min(size) < 32:
        raise MoptError(f"training size {size[0]}x{size[1]} is too small; use at least 32x32 (the encoder's stride)")
    output = Path(output)
    if output.suffix not in (".pth", ".pt", ".safetensors"):
        raise MoptError(f"output {output} must end in .pth, .pt or .safetensors")

    # Everything that can fail on bad input happens before the (long) training loop.
    normalization = IMAGENET
    provenance: dict[str, Any] = {"init_sha256": None, "init_train": None}
    if init is not None:
        loaded = load_checkpoint(init)
        # A fine-tune carries what it started from and how that was trained (nested, stage by stage).
        provenance = {"init_sha256": loaded.sha256, "init_train": loaded.extra.get("train")}
        if arch is not None and arch != loaded.arch:
            raise MoptError(f"--init {init} holds architecture {loaded.arch!r} but --arch is {arch!r}; drop --arch")
        arch, normalization = loaded.arch, loaded.normalization
    arch = arch or DEFAULT_ARCH
    architectures.model_entry(arch)  # raises a MoptError listing valid names

    if data is not None:
        pairs = load_pairs(data)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(pairs))
        n_val = max(1, round(len(pairs) * HOLDOUT_FRACTION)) if len(pairs) >= 10 else 0
        # Fewer than 10 pairs cannot spare a hold-out: validate on the training pairs and say so in the record.
        val_samples = [_fit_to_crop(*pairs[i], size) for i in (order[:n_val] if n_val else order)]
        train_samples = [_fit_to_crop(*pairs[i], size) for i in order[n_val:]]
        source = {"data": str(data), "pairs": len(pairs), "holdout": n_val}
        val_desc = f"{n_val} held-out pairs" if n_val else f"the {len(pairs)} training pairs (too few to hold out)"
    else:
        train_samples = synthetic_training_samples(synthetic, size, seed, max_scale, on_data)
        # The validation set is fixed (seed 0, 192x192) whatever the training seed and crop: one yardstick.
        val_samples = validation_set(validation)
        source = {"synthetic": synthetic, "max_scale": max_scale}
        val_h, val_w = VALIDATION_SIZE
        val_desc = f"built-in synthetic validation set: {validation} samples at {val_h}x{val_w}, seed 0"

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        torch.manual_seed(seed)
        if init is not None:
            model = loaded.model
        else:
            model = architectures.create_model(arch)
        # channels_last runs the depthwise/pointwise convolutions ~1.6x faster on CPU (oneDNN's native layout).
        model = model.to(memory_format=torch.channels_last).train()

        dataset = AugmentedPairs(train_samples, size, normalization, seed)
        batch = min(batch_size, len(dataset))
        loader = DataLoader(
            dataset, batch_size=batch, shuffle=True, num_workers=0,
            # A lone last sample would give BatchNorm a batch of one; drop it (the shuffle changes each epoch).
            drop_last=len(dataset) > batch,
            generator=torch.Generator().manual_seed(seed),
        )
        steps_per_epoch = len(loader)
        total_steps = steps_per_epoch * epochs
        optimizer = torch.optim.AdamW(_parameter_groups(model, weight_decay), lr=lr)
        # One-cycle: a short warm-up protects the fresh BatchNorm statistics, then a cosine decay to lr/1e4
        # lands in a flat minimum without a hand-tuned step schedule.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=total_steps, pct_start=min(0.3, max(0.05, 1 / epochs)),
            anneal_strategy="cos", div_factor=25.0, final_div_factor=400.0,
        )
        history: list[EpochReport] = []
        step = 0
        for epoch in range(epochs):
            epoch_start = time.perf_counter()
            dataset.epoch = epoch
            model.train()
            losses = []
            for x, y in loader:
                loss = matting_loss(model(x.contiguous(memory_format=torch.channels_last)), y)
                if not math.isfinite(loss.item()):
                    raise MoptError(f"training diverged at step {step + 1} (loss {loss.item()}); lower --lr (now {lr})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                losses.append(loss.item())
                if on_step is not None:
                    on_step(step, total_steps, losses[-1])
            metrics = evaluate_iou(model, val_samples, normalization)
            report = EpochReport(
                epoch=epoch + 1, epochs=epochs, train_loss=float(np.mean(losses)), val_iou=metrics["iou"],
                val_mad=metrics["mad"], lr=float(scheduler.get_last_lr()[0]),
                seconds=time.perf_counter() - epoch_start,
            )
            history.append(report)
            if on_epoch is not None:
                on_epoch(report)
    finally:
        torch.set_num_threads(previous_threads)

    seconds = time.perf_counter() - started
    final = history[-1]
    model = model.to(memory_format=torch.contiguous_format).eval()
    record = {
        "command": command,
        "arch": arch,
        **source,
        "size": list(size),
        "epochs": epochs,
        "batch": batch,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "threads": threads,
        "init": str(init) if init is not None else None,
        **provenance,
        "val_iou": round(final.val_iou, 5),
        "val_mad": round(final.val_mad, 6),
        "val_set": val_desc,
        "val_count": len(val_samples),
        "seconds": round(seconds, 1),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": str(torch.__version__),  # TorchVersion is a str subclass that weights_only loading refuses
        "history": [{k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(r).items()} for r in history],
    }
    save_checkpoint(model, output, normalization, extra={"train": record})
    return TrainResult(output, arch, final.val_iou, final.val_mad, len(val_samples), seconds, history)
