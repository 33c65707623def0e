"""The loss-cost benchmark: what PM Dice costs next to nnU-Net's own losses (forward+backward time, peak memory).

``nnunet-pmdice bench-loss`` (or ``python scripts/bench_loss.py``) times each loss on the same
logits and label maps and prints a table with ratios to nnU-Net's losses measured in the same run:

- the Dice-type rows against nnU-Net's ``MemoryEfficientSoftDiceLoss`` (softmax, ``do_bg=False``,
  smooth 1e-5: what ``nnUNetTrainer`` uses), the compound rows against nnU-Net's ``DC_and_CE_loss``;
  every PM Dice setting of the paper (:data:`PM_SETTINGS`) is a row;
- region (sigmoid) rows on a bool multi-hot target: PM Dice with ``nonlin="sigmoid"`` against nnU-Net's
  Dice as ``DC_and_BCE_loss`` builds it (sigmoid, ``do_bg=True``), BCE + PM Dice against ``DC_and_BCE_loss``;
- "PM Dice (plain autograd)" is eq. 5 written the obvious way (``losses.reference``): the "before";
- deep-supervision rows run the whole list of outputs an nnU-Net plan produces, weighted as nnU-Net does,
  through the wrapper a trainer uses (nnU-Net's ``DeepSupervisionWrapper`` for nnU-Net's losses, the
  plugin's ``DeepSupervisionLoss``, which checks the target's values once per step, for the plugin's);
- the training-iteration rows run one full ``nnUNetTrainer.train_step`` (forward, loss, backward,
  optimiser step) of nnU-Net's default trainer and of plugin trainers on the same batch;
- the PM Dice rows are summarised against the targets :data:`TIME_TARGET_MAX` (worst shape),
  :data:`TIME_TARGET_MEDIAN` (median over the shapes) and :data:`MEMORY_TARGET_MAX`.

Time: median over ``repeat`` calls after ``warmup`` calls, each call timed alone by PyTorch's benchmark clock
(``torch.utils.benchmark``'s ``timer``, which synchronises the accelerator first); the calls of the rows
of one shape (and of the trainers) are interleaved, one of each per round in a shuffled order. Peak extra memory:
CUDA from ``torch.cuda.max_memory_allocated`` minus the memory held before the call; CPU from
PyTorch's memory profiler (``torch.profiler`` with ``profile_memory``): the peak of the running sum of
the sizes of tensors created minus destroyed during one forward+backward, the input gradient included.

CPU memory policy: with glibc's default settings a freed block above its (moving) mmap threshold goes back
to the operating system, and the next allocation of that size pays a page fault per 4 KiB page; which calls
meet this depends on what the call before freed, and it moved single rows by several times. On the CPU
the benchmark therefore first makes glibc keep freed memory in the process (:func:`keep_freed_memory`),
as PyTorch's CUDA caching allocator does on a GPU, so that the rows compare the losses' arithmetic;
``--system-malloc`` keeps the defaults.
"""
from __future__ import annotations

import contextlib
import math
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.benchmark.utils.timer import timer as synced_clock

from ..fileio import write_json, write_text

SHAPES: Dict[str, Tuple[int, ...]] = {
    "2D 12x4x256x256": (12, 4, 256, 256),
    "2D 2x2x512x512": (2, 2, 512, 512),
    "3D 2x4x64x128x128": (2, 4, 64, 128, 128),
    "3D 2x2x128x128x128": (2, 2, 128, 128, 128),
}
#: deep-supervision output lists: the full-resolution shape and the number of outputs an nnU-Net plan of
#: that patch size produces (one per decoder stage: 2D 256x256 -> 7 stages, 3D 64x128x128 -> 6 stages)
DS_SHAPES: Dict[str, Tuple[Tuple[int, ...], int]] = {
    "2D-DS 12x4x256x256 (6 outputs)": ((12, 4, 256, 256), 6),
    "3D-DS 2x4x64x128x128 (5 outputs)": ((2, 4, 64, 128, 128), 5),
}
QUICK_SHAPES = {"2D 2x3x64x64": (2, 3, 64, 64), "3D 1x3x16x32x32": (1, 3, 16, 32, 32)}
QUICK_DS = {"2D-DS 2x3x64x64 (3 outputs)": ((2, 3, 64, 64), 3)}


@dataclass
class LossCase:
    """One row of the loss table: a loss, made fresh for each shape, and the row it is compared with."""

    name: str
    baseline: str  # the row this one is compared with ("" for a baseline itself)
    make: Callable[[int], Callable]  # (number of output channels) -> loss(logits, target)
    #: the target it takes: "labels" (an integer label map, B x 1) or "regions" (bool multi-hot, B x C, as
    #: nnU-Net's region training feeds it)
    target: str = "labels"
    #: one of nnU-Net's own losses (deep supervision through nnU-Net's wrapper) rather than this package's
    nnunet: bool = False


def _nnunet_dice(do_bg=False, nonlin="softmax"):
    def make(_c):
        from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
        from nnunetv2.utilities.helpers import softmax_helper_dim1
        return MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1 if nonlin == "softmax" else torch.sigmoid,
                                           batch_dice=False, do_bg=do_bg, smooth=1e-5, ddp=False)
    return make


def _nnunet_dc_ce(_c):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    return DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)


def _nnunet_dc_bce(_c):
    """nnU-Net's region loss as ``nnUNetTrainer._build_loss`` builds it for a region dataset."""
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    return DC_and_BCE_loss({}, {"batch_dice": False, "do_bg": True, "smooth": 1e-5, "ddp": False},
                           use_ignore_label=False, dice_class=MemoryEfficientSoftDiceLoss)


#: the per-class gammas of the "per-class list" rows: four different values, the first C of them
PER_CLASS_GAMMAS = (1.0, 2.0, 0.5, 5.0)


def _pm(cls_name="PMDiceLoss", per_class=False, **kw):
    def make(c):
        from nnunet_pmdice import losses
        if per_class:
            kw["gamma"] = list(PER_CLASS_GAMMAS[:c])
        return getattr(losses, cls_name)(**kw)
    return make


def _reference(_c):
    from nnunet_pmdice.losses.reference import reference_pm_dice
    return lambda x, t: reference_pm_dice(x, t, gamma=1.0)


DICE_BASE = "nnU-Net MemoryEfficientSoftDiceLoss"
CE_BASE = "nnU-Net DC_and_CE_loss"
REGION_DICE_BASE = "nnU-Net region Dice (sigmoid)"
BCE_BASE = "nnU-Net DC_and_BCE_loss"

#: the PM Dice settings the paper uses (its gamma sweep, its MSSEG setting) and a per-class list: each a row in
#: label (softmax) and, where it has a meaning there, region (sigmoid) mode
PM_SETTINGS: Dict[str, dict] = {
    "gamma 0": dict(gamma=0.0), "gamma 0.5": dict(gamma=0.5), "gamma 1": dict(gamma=1.0),
    "gamma 2": dict(gamma=2.0), "gamma 5": dict(gamma=5.0), "gamma 2, gamma_bg 1": dict(gamma=2.0, gamma_bg=1.0),
    "per-class gamma (1, 2, 0.5, 5)": dict(per_class=True),
}
#: the targets of the PM Dice rows against nnU-Net's loss of the same kind (from the benchmark, not from tests)
TIME_TARGET_MAX, TIME_TARGET_MEDIAN, MEMORY_TARGET_MAX = 1.2, 1.0, 1.1


def default_cases() -> List[LossCase]:
    cases = [
        LossCase(DICE_BASE, "", _nnunet_dice(), nnunet=True),
        LossCase(CE_BASE, "", _nnunet_dc_ce, nnunet=True),
        LossCase(REGION_DICE_BASE, "", _nnunet_dice(do_bg=True, nonlin="sigmoid"), "regions", nnunet=True),
        LossCase(BCE_BASE, "", _nnunet_dc_bce, "regions", nnunet=True),
        LossCase("nnU-Net MemoryEfficientSoftDiceLoss, do_bg=True", DICE_BASE, _nnunet_dice(do_bg=True), nnunet=True),
    ]
    cases += [LossCase(f"PM Dice {label}", DICE_BASE, _pm(**kw)) for label, kw in PM_SETTINGS.items()]
    cases += [
        LossCase("PM Dice gamma 1, batch Dice", DICE_BASE, _pm(gamma=1.0, batch_dice=True)),
        LossCase("PM Dice (plain autograd)", DICE_BASE, _reference),
        LossCase("CE + PM Dice", CE_BASE, _pm("CEPMDiceLoss", gamma=1.0)),
        LossCase("CE + PM Dice gamma 2, gamma_bg 1", CE_BASE, _pm("CEPMDiceLoss", gamma=2.0, gamma_bg=1.0)),
        LossCase("Focal CE + PM Dice", CE_BASE, _pm("FocalCEPMDiceLoss", gamma=1.0)),
        LossCase("TopK CE + PM Dice", CE_BASE, _pm("TopKCEPMDiceLoss", gamma=1.0)),
    ]
    cases += [LossCase(f"PM Dice {label} (regions)", REGION_DICE_BASE, _pm(nonlin="sigmoid", **kw), "regions")
              for label, kw in PM_SETTINGS.items() if "gamma_bg" not in kw]
    cases.append(LossCase("BCE + PM Dice (regions)", BCE_BASE, _pm("PMDiceBCELoss", gamma=1.0), "regions"))
    return cases + _other_package_losses()


def pm_rows(rows: List[dict]) -> List[str]:
    """The PM Dice rows the targets apply to: every setting of :data:`PM_SETTINGS`, label and region mode."""
    names = [f"PM Dice {label}" for label in PM_SETTINGS]
    names += [f"PM Dice {label} (regions)" for label, kw in PM_SETTINGS.items() if "gamma_bg" not in kw]
    present = {r["loss"] for r in rows}
    return [n for n in names if n in present]


def _other_package_losses() -> List[LossCase]:
    """The paper's other Dice-type losses, where the package has them (benchmarked as PM Dice's peers)."""
    from nnunet_pmdice import losses
    found = []
    for cls_name, label in (("TopKDiceLoss", "TopK Dice"), ("ZhaoFocalDiceLoss", "Focal Dice (Zhao)"),
                            ("LogDiceLoss", "Logarithmic Dice"), ("WangFocalDiceLoss", "Focal Dice (Wang/Prencipe)")):
        cls = getattr(losses, cls_name, None)
        if cls is not None:
            found.append(LossCase(label, DICE_BASE, lambda _c, cls=cls: cls()))
    return found


def _fwd_bwd(loss_fn, logits, target, autocast_dtype):
    if isinstance(logits, list):
        for l in logits:
            l.grad = None
    else:
        logits.grad = None
    ctx = (torch.autocast(logits[0].device.type if isinstance(logits, list) else logits.device.type,
                          dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext())
    with ctx:
        value = loss_fn(logits, target)
    value.backward()
    return value


def median_seconds(step: Callable[[], object], warmup: int, repeat: int) -> float:
    """Median seconds of ``repeat`` calls of ``step`` after ``warmup`` calls, each call timed alone.

    The clock is ``torch.utils.benchmark``'s ``timer`` (it synchronises the accelerator before reading
    the time). Its ``Timer`` class is not used: ``Timer.timeit(n)`` reports the mean of one block of
    ``n`` calls after warm-up calls of its own, and ``blocked_autorange`` picks the block size itself;
    this benchmark reports the median of single calls, for a fixed, given number of calls.
    """
    return interleaved_median_seconds([step], warmup, repeat)[0]


def peak_extra_memory(loss_fn, logits, target, autocast_dtype=None) -> float:
    """Bytes: the peak of memory allocated during one forward+backward above what was held before."""
    device = (logits[0] if isinstance(logits, list) else logits).device
    leaves = logits if isinstance(logits, list) else [logits]
    for l in leaves:
        l.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _fwd_bwd(loss_fn, logits, target, autocast_dtype)
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        _fwd_bwd(loss_fn, logits, target, autocast_dtype)
    current = peak = 0
    for _t, action, _key, size in sorted(prof._memory_profile().timeline, key=lambda r: r[0]):
        name = getattr(action, "name", str(action))
        if name == "CREATE":
            current += size
        elif name == "DESTROY":
            current -= size
        peak = max(peak, current)
    return float(peak)


def _inputs(shape, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(shape, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    t = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=g).to(device)
    return x, t


def _regions(shape, device, seed=1):
    """A bool multi-hot target of C nested regions (label >= 1, >= 2, ...), as nnU-Net's region training has it."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, shape[1] + 1, (shape[0], 1, *shape[2:]), generator=g)
    return torch.cat([labels > r for r in range(shape[1])], 1).to(device)


def _downsampled(t, size):
    """Nearest-neighbour downsampling of a target, as nnU-Net's ``DownsampleSegForDSTransform`` (dtype kept)."""
    return torch.nn.functional.interpolate(t.float(), size=size, mode="nearest-exact").to(t.dtype)


def _ds_inputs(shape, n_outputs, device, dtype):
    xs, ts, rs = [], [], []
    x0, t0 = _inputs(shape, device, dtype)
    r0 = _regions(shape, device)
    for i in range(n_outputs):
        size = [max(1, s // (2 ** i)) for s in shape[2:]]
        if i == 0:
            xs.append(x0)
            ts.append(t0)
            rs.append(r0)
            continue
        g = torch.Generator().manual_seed(i)
        xs.append((2 * torch.randn(shape[0], shape[1], *size, generator=g)).to(device=device, dtype=dtype)
                  .requires_grad_())
        ts.append(_downsampled(t0, size))
        rs.append(_downsampled(r0, size))
    return xs, ts, rs


def _ds_wrap(loss, n, nnunet: bool):
    """The deep-supervision wrapper a trainer puts around the loss: nnU-Net's for nnU-Net's losses, the plugin's
    (:class:`~nnunet_pmdice.trainers.loss_builder.DeepSupervisionLoss`, values checked once per step) for ours."""
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunet_pmdice.trainers.loss_builder import DeepSupervisionLoss, deep_supervision_weights
    return (DeepSupervisionWrapper if nnunet else DeepSupervisionLoss)(loss, deep_supervision_weights(n))


def run_loss_benchmark(shapes: Dict[str, Tuple[int, ...]], ds_shapes: Dict[str, Tuple[Tuple[int, ...], int]],
                       cases: Sequence[LossCase], device: torch.device, warmup: int = 2, repeat: int = 10,
                       autocast_dtype=None, compile_losses: bool = False, memory: bool = True,
                       progress: bool = True) -> List[dict]:
    """One row per (shape, case): median forward+backward milliseconds and peak extra MiB.

    The calls of every case of a shape are interleaved (one call of each case per round, in a shuffled
    order, ``repeat`` rounds after ``warmup`` rounds), so a slow spell of the machine falls on every row of
    the shape alike rather than on whichever row ran during it: the ratios are what the benchmark reports.
    """
    from tqdm import tqdm
    jobs = [(label, shape, None) for label, shape in shapes.items()]
    jobs += [(label, shape, n) for label, (shape, n) in ds_shapes.items()]
    rows = []
    bar = tqdm(total=len(jobs) * len(cases), desc="losses", unit="row", disable=not progress)
    for label, shape, n_ds in jobs:
        if n_ds is None:
            logits, target = _inputs(shape, device, torch.float32)
            targets = {"labels": target, "regions": _regions(shape, device)}
        else:
            logits, target, regions = _ds_inputs(shape, n_ds, device, torch.float32)
            targets = {"labels": target, "regions": regions}
        fns = []
        for case in cases:
            loss = case.make(shape[1])
            if isinstance(loss, torch.nn.Module):
                loss = loss.to(device)
            if n_ds is not None:
                if not isinstance(loss, torch.nn.Module):
                    continue  # the plain-autograd reference is a function; DS rows use modules
                loss = _ds_wrap(loss, n_ds, case.nnunet)
            fn = torch.compile(loss) if compile_losses else loss
            fns.append((case, fn, targets[case.target]))
        bar.set_postfix_str(label)
        steps = [lambda fn=fn, t=t, x=logits: _fwd_bwd(fn, x, t, autocast_dtype) for _c, fn, t in fns]
        seconds = interleaved_median_seconds(steps, warmup, repeat)
        for (case, fn, t), sec in zip(fns, seconds):
            mem = peak_extra_memory(fn, logits, t, autocast_dtype) if memory else float("nan")
            rows.append(dict(shape=label, loss=case.name, baseline=case.baseline, ms=sec * 1e3,
                             peak_mib=mem / 2 ** 20))
            bar.update()
        bar.update(len(cases) - len(fns))
        del logits, target, targets, fns, steps
    bar.close()
    _add_ratios(rows)
    return rows


def interleaved_median_seconds(steps: Sequence[Callable[[], object]], warmup: int, repeat: int,
                               seed: int = 0) -> List[float]:
    """Median seconds of each step over ``repeat`` rounds, each round calling every step once, in a new order.

    Timed like :func:`median_seconds` (each call alone, the accelerator synchronised); ``warmup`` rounds
    first. The order is shuffled in every round (``seed``): what a call leaves behind (the allocator's
    free memory, the caches) changes the next call's time by up to half on the CPU, so in a fixed order the
    first step of each round would always follow the same one.
    """
    import random
    rng = random.Random(seed)
    order = list(range(len(steps)))
    for _ in range(warmup):
        for step in steps:
            step()
    times: List[List[float]] = [[] for _ in steps]
    for _ in range(repeat):
        rng.shuffle(order)
        for i in order:
            t0 = synced_clock()
            steps[i]()
            times[i].append(synced_clock() - t0)
    return [statistics.median(t) for t in times]


def _add_ratios(rows: List[dict]) -> None:
    index = {(r["shape"], r["loss"]): r for r in rows}
    for r in rows:
        base = index.get((r["shape"], r["baseline"]))
        r["time_ratio"] = r["ms"] / base["ms"] if base else float("nan")
        r["mem_ratio"] = (r["peak_mib"] / base["peak_mib"] if base and base["peak_mib"] > 0
                          else float("nan"))


# -- one full training iteration ---------------------------------------------------------------------------
def _plans(patch, batch_size, n_stages, features, dim):
    conv = "torch.nn.modules.conv.Conv3d" if dim == 3 else "torch.nn.modules.conv.Conv2d"
    norm = ("torch.nn.modules.instancenorm.InstanceNorm3d" if dim == 3
            else "torch.nn.modules.instancenorm.InstanceNorm2d")
    strides = [[1] * dim] + [[2] * dim] * (n_stages - 1)
    config = {
        "data_identifier": "bench", "preprocessor_name": "DefaultPreprocessor", "batch_size": batch_size,
        "patch_size": list(patch), "median_image_size_in_voxels": list(patch), "spacing": [1.0] * dim,
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_probabilities_kwargs": {},
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": {"n_stages": n_stages, "features_per_stage": features, "conv_op": conv,
                                         "kernel_sizes": [[3] * dim] * n_stages, "strides": strides,
                                         "n_conv_per_stage": [2] * n_stages,
                                         "n_conv_per_stage_decoder": [2] * (n_stages - 1), "conv_bias": True,
                                         "norm_op": norm, "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                                         "dropout_op": None, "dropout_op_kwargs": None,
                                         "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": True,
    }
    return {"dataset_name": "Dataset999_Bench", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [1.0] * 3, "original_median_shape_after_transp": [1] + list(patch),
            "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"bench": config}, "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {}}


def _ready_trainer(name: str, plans: dict, dataset_json: dict, device: torch.device):
    """A real trainer set up as ``initialize()`` does it, minus the on-disk dataset lookup (there is none)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        cls = recursive_find_trainer_class_by_name(name)
        tr = cls(plans=dict(plans, continue_training=False), configuration="bench", fold=0,
                 dataset_json=dataset_json, device=device)
        tr.num_input_channels = determine_num_input_channels(tr.plans_manager, tr.configuration_manager, dataset_json)
        tr.network = tr.build_network_architecture(tr.plans_manager, tr.configuration_manager, tr.num_input_channels,
                                                   tr.label_manager.num_segmentation_heads,
                                                   tr.enable_deep_supervision).to(device)
        tr.optimizer, tr.lr_scheduler = tr.configure_optimizers()
        tr.loss = tr._build_loss()
        tr.was_initialized = True
        tr.network.train()
    return tr


#: the trainers of the training-iteration rows; nnU-Net's default comes twice: the second instance's ratio is the
#: spread between two identical trainers in the same run, the scale against which the others' ratios read
TRAIN_STEP_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerPMDice", "nnUNetTrainerPMDice_g2_bg1", "nnUNetTrainerCEPMDice",
                       "nnUNetTrainer")
#: the target for a training iteration with a plugin trainer, as a ratio to nnUNetTrainer's
TRAIN_STEP_TARGET = 1.02


def run_training_iteration_benchmark(device: torch.device, patch=(128, 128), batch_size=4, n_stages=6,
                                     num_classes=4, warmup=2, repeat=7,
                                     trainers=TRAIN_STEP_TRAINERS) -> List[dict]:
    """Median seconds of one real ``train_step`` of each trainer on the same batch, the trainers' calls interleaved.

    The batch is what nnU-Net's data loader gives: float32 images, int16 label maps at every
    deep-supervision scale (nearest-neighbour downsampled).
    """
    import os
    dim = len(patch)
    features = [min(32 * 2 ** i, 320 if dim == 3 else 512) for i in range(n_stages)]
    plans = _plans(patch, batch_size, n_stages, features, dim)
    dataset_json = {"channel_names": {"0": "image"}, "labels": {"background": 0, **{f"c{i}": i for i in
                                                                                   range(1, num_classes)}},
                    "numTraining": 1, "file_ending": ".nii.gz"}
    g = torch.Generator().manual_seed(0)
    data = torch.randn(batch_size, 1, *patch, generator=g)
    seg = torch.randint(0, num_classes, (batch_size, 1, *patch), generator=g).to(torch.int16)
    targets = [seg if i == 0 else _downsampled(seg, [s // 2 ** i for s in patch]) for i in range(n_stages - 1)]
    batch = {"data": data, "target": targets}
    old = os.environ.get("nnUNet_results")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["nnUNet_results"] = tmp
        try:
            ready = [_ready_trainer(name, plans, dataset_json, device) for name in trainers]
            seconds = interleaved_median_seconds([lambda tr=tr: tr.train_step(batch) for tr in ready], warmup, repeat)
        finally:
            if old is None:
                os.environ.pop("nnUNet_results", None)
            else:
                os.environ["nnUNet_results"] = old
    rows, seen = [], set()
    for name, sec in zip(trainers, seconds):
        rows.append(dict(trainer=name + (" (second instance)" if name in seen else ""), ms=sec * 1e3))
        seen.add(name)
    for r in rows:
        r["ratio"] = r["ms"] / rows[0]["ms"]
    return rows


def target_summary(rows: List[dict]) -> List[dict]:
    """Per PM Dice row (:func:`pm_rows`): the worst and the median time ratio over the shapes (deep-supervision
    lists included) and the worst memory ratio, each against its target (:data:`TIME_TARGET_MAX`,
    :data:`TIME_TARGET_MEDIAN`, :data:`MEMORY_TARGET_MAX`).

    >>> rows = [dict(shape=s, loss="PM Dice gamma 1", time_ratio=t, mem_ratio=0.9) for s, t in (("a", 0.8), ("b", 1.1))]
    >>> e = target_summary(rows)[0]
    >>> e["max_time_ratio"], round(e["median_time_ratio"], 2), e["met"]
    (1.1, 0.95, True)
    >>> target_summary([dict(r, time_ratio=1.3) if r["shape"] == "b" else r for r in rows])[0]["met"]
    False
    """
    out = []
    for name in pm_rows(rows):
        mine = [r for r in rows if r["loss"] == name]
        times = [r["time_ratio"] for r in mine]
        mems = [r["mem_ratio"] for r in mine if not math.isnan(r["mem_ratio"])]
        worst_mem = max(mems) if mems else float("nan")
        entry = dict(loss=name, shapes=len(mine), max_time_ratio=max(times), median_time_ratio=statistics.median(times),
                     max_mem_ratio=worst_mem)
        entry["time_met"] = entry["max_time_ratio"] <= TIME_TARGET_MAX and entry["median_time_ratio"] <= TIME_TARGET_MEDIAN
        entry["mem_met"] = (not mems) or worst_mem <= MEMORY_TARGET_MAX
        entry["met"] = entry["time_met"] and entry["mem_met"]
        out.append(entry)
    return out


# -- output --------------------------------------------------------------------------------------------------
def _fmt(v, spec):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def markdown_table(rows: List[dict]) -> str:
    lines = ["| shape | loss | fwd+bwd ms | x baseline | peak extra MiB | x baseline |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['loss']} | {_fmt(r['ms'], '.2f')} | {_fmt(r['time_ratio'], '.2f')} | "
                     f"{_fmt(r['peak_mib'], '.1f')} | {_fmt(r['mem_ratio'], '.2f')} |")
    return "\n".join(lines)


def markdown_training_table(rows: List[dict]) -> str:
    lines = ["| trainer | train_step ms | x nnUNetTrainer |", "|---|---:|---:|"]
    lines += [f"| {r['trainer']} | {r['ms']:.1f} | {r['ratio']:.3f} |" for r in rows]
    return "\n".join(lines)


def markdown_target_table(summary: List[dict]) -> str:
    lines = [f"| PM Dice setting | worst x nnU-Net (target <= {TIME_TARGET_MAX:g}) | median x nnU-Net (target <= "
             f"{TIME_TARGET_MEDIAN:g}) | worst memory x nnU-Net (target <= {MEMORY_TARGET_MAX:g}) | targets met |",
             "|---|---:|---:|---:|---|"]
    for e in summary:
        lines.append(f"| {e['loss']} | {e['max_time_ratio']:.2f} | {e['median_time_ratio']:.2f} | "
                     f"{_fmt(e['max_mem_ratio'], '.2f')} | {'yes' if e['met'] else 'no'} |")
    return "\n".join(lines)


def plot_ratios(rows: List[dict], path: Path, title: str) -> None:
    from ..evaluation.plots import pyplot, save_figure
    plt = pyplot()
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    losses = [l for l in dict.fromkeys(r["loss"] for r in rows) if any(r["baseline"] for r in rows if r["loss"] == l)]
    index = {(r["shape"], r["loss"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(shapes)), 0.45 * len(losses) + 2.5))
    width = 0.8 / max(1, len(shapes))
    for i, shape in enumerate(shapes):
        vals = [index.get((shape, l), {}).get("time_ratio", float("nan")) for l in losses]
        ax.barh([j + i * width for j in range(len(losses))], vals, height=width, label=shape)
    ax.axvline(1.0, color="k", lw=1)
    ax.set_yticks([j + width * (len(shapes) - 1) / 2 for j in range(len(losses))])
    ax.set_yticklabels(losses)
    ax.invert_yaxis()
    ax.set_xlabel("forward+backward time / nnU-Net baseline (same run)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, tight=False)


def write_outputs(rows: List[dict], train_rows: List[dict], out: Path, meta: dict,
                  targets: Optional[Dict[str, List[dict]]] = None) -> None:
    """Writes ``loss_benchmark.{csv,json,md,png}`` into ``out`` (each file atomically)."""
    from ..evaluation.aggregate import write_csv

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "loss_benchmark.csv", rows)
    write_json(out / "loss_benchmark.json", {"meta": meta, "losses": rows, "train_step": train_rows,
                                              "targets": targets or {}})
    md = [f"{meta['device']}, torch {meta['torch']}" + (f"; {meta['malloc']}" if "malloc" in meta else ""), "",
          markdown_table(rows)]
    for setting, summary in (targets or {}).items():
        md += ["", f"PM Dice against its targets ({setting}):", "", markdown_target_table(summary)]
    if train_rows:
        md += ["", markdown_training_table(train_rows)]
    write_text(out / "loss_benchmark.md", "\n".join(md) + "\n")
    plot_ratios(rows, out / "loss_benchmark.png", f"Loss cost on {meta['device']}")


#: ``mallopt`` parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> Optional[str]:
    """Makes glibc's malloc keep the memory this process frees, for the rest of the process.

    Allocations up to 1 GiB come from the heap (``M_MMAP_THRESHOLD``) and the heap is not given back to the
    operating system until 2 GiB of it are free (``M_TRIM_THRESHOLD``), so a repeated allocation reuses
    memory that is already mapped instead of faulting new pages in. Returns the setting in words, or None
    where the C library is not glibc (nothing is changed there).

    Raises:
        RuntimeError: glibc refused a setting (the allocator would then be in neither state).
    """
    import ctypes
    import platform
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    mallopt = ctypes.CDLL(None).mallopt
    for name, param, value in (("M_MMAP_THRESHOLD", _M_MMAP_THRESHOLD, 1 << 30),
                               ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, 2 ** 31 - 1)):
        if mallopt(param, value) != 1:  # mallopt returns 1 on success
            raise RuntimeError(f"glibc's mallopt refused {name} = {value}; run bench-loss with --system-malloc")
    return "glibc malloc keeps freed memory (mmap threshold 1 GiB, trim threshold 2 GiB)"


def main(argv: Optional[List[str]] = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="nnunet-pmdice bench-loss", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


def add_arguments(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run, not a measurement)")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--no-train-step", action="store_true", help="skip the full training-iteration comparison")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default="loss_benchmark", help="folder for the table, CSV, JSON and plot")
    p.add_argument("--system-malloc", action="store_true",
                   help="on the CPU, keep glibc's default malloc settings instead of keeping freed memory in the "
                        "process (timings then include page faults that depend on the order of allocations)")


def run(args) -> int:
    import platform
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but torch sees no CUDA device")
    shapes, ds = (QUICK_SHAPES, QUICK_DS) if args.quick else (SHAPES, DS_SHAPES)
    cases = default_cases()
    settings = [("fp32", None, False)]
    if device.type == "cuda":
        settings = [("fp16 autocast", torch.float16, False), ("fp16 autocast + torch.compile", torch.float16, True)]
    meta = dict(device=str(torch.cuda.get_device_name(device)) if device.type == "cuda"
                else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
                torch=torch.__version__, repeat=args.repeat, warmup=args.warmup)
    if device.type == "cpu":
        meta["malloc"] = ("system defaults (--system-malloc)" if args.system_malloc
                          else keep_freed_memory() or "system defaults (not glibc)")
        print(f"CPU memory: {meta['malloc']}")
    all_rows, targets = [], {}
    for label, dtype, comp in settings:
        rows = run_loss_benchmark(shapes, ds, cases, device, args.warmup, args.repeat, dtype, comp,
                                  memory=not args.no_memory)
        for r in rows:
            r["setting"] = label
        all_rows += rows
        targets[label] = target_summary(rows)
        print(f"\n## {meta['device']}, {label}\n")
        print(markdown_table(rows))
        print(f"\n### PM Dice against its targets ({label})\n")
        print(markdown_target_table(targets[label]))
    train_rows = []
    if not args.no_train_step:
        kw = dict(patch=(64, 64), batch_size=2, n_stages=4, repeat=3) if args.quick else {}
        train_rows = run_training_iteration_benchmark(device, **kw)
        print("\n## One nnU-Net training iteration (train_step), same batch\n")
        print(markdown_training_table(train_rows))
        print(f"(target for the plugin trainers: <= {TRAIN_STEP_TARGET:g} x nnUNetTrainer)")
    write_outputs(all_rows, train_rows, Path(args.out), meta, targets)
    print(f"\nwrote {Path(args.out).resolve()}/loss_benchmark.{{md,csv,json,png}}")
    return 0
