"""The paper's Figure 2 from a trained model: where PM Dice's modulating term puts the loss.

For each chosen test case, one row of panels: the image, the reference, the prediction (with the case's
Dice loss), and the modulating term ``m = |y - p̂| ** gamma`` of one class for gamma 0.5, 1, 2, 5, each
with the case's PM Dice loss at that gamma. The losses are computed by the package's own
:class:`~nnunet_pmdice.losses.PMDiceLoss` on the predicted probabilities (passed as log-probabilities:
the softmax of ``log p`` is ``p``), with the paper's settings: every class including the background,
squared denominator, epsilon 1e-6, one case at a time (gamma 0 is the Dice loss of eq. 4).

Probabilities come either from a trained nnU-Net model folder (``nnUNetPredictor``, with test-time
mirroring as ``nnUNetv2_predict``) or from a folder written by ``nnUNetv2_predict --save_probabilities``
(its ``<case>.npz`` files and ``dataset.json``)::

    nnunet-pmdice modulation-figure -m RESULTS/Dataset500_X/nnUNetTrainer__nnUNetPlans__2d -f all \\
        -i RAW/Dataset500_X/imagesTs -l RAW/Dataset500_X/labelsTs -o figure2.png
    nnunet-pmdice modulation-figure -p PREDICTIONS_WITH_NPZ -i imagesTs -l labelsTs -o figure2.png --cases case_001

Without ``--cases``, the cases with the smallest reference objects of the class are drawn (``-n``, default 3).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..fileio import read_json, write_json

#: the focusing parameters of the paper's Figure 2
FIGURE_GAMMAS = (0.5, 1.0, 2.0, 5.0)


class FigureInputError(ValueError):
    """A missing or unusable input of the modulation figure (the CLI prints it as one line)."""


def modulating_term(probability: np.ndarray, reference: np.ndarray, gamma: float) -> np.ndarray:
    """``m = |y - p̂| ** gamma`` of one class: ``probability`` its predicted probability, ``reference`` 0/1.

    >>> modulating_term(np.array([0.9, 0.2, 0.5]), np.array([1, 1, 0]), 2.0).round(4).tolist()
    [0.01, 0.64, 0.25]

    Raises:
        ValueError: shapes differ or gamma is negative.
    """
    probability = np.asarray(probability, np.float64)
    reference = np.asarray(reference, np.float64)
    if probability.shape != reference.shape:
        raise ValueError(f"probability {probability.shape} and reference {reference.shape} differ in shape")
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    return np.abs(reference - probability) ** float(gamma)


def case_losses(probabilities: np.ndarray, label: np.ndarray, gammas: Sequence[float] = FIGURE_GAMMAS,
                ignore_label: Optional[int] = None) -> Dict[float, float]:
    """PM Dice loss of one case for each gamma (key 0.0: the Dice loss), from softmax probabilities.

    Args:
        probabilities: ``(C, *spatial)``, summing to 1 over C.
        label: ``spatial`` (or ``(1, *spatial)``) label map with values < C (and ``ignore_label``).
        gammas: focusing parameters; 0 is added (the Dice loss).
        ignore_label: pixels with this label count in no sum.

    >>> p = np.array([[0.9, 0.2], [0.1, 0.8]])       # C=2 classes, 2 pixels
    >>> {g: round(v, 4) for g, v in case_losses(p, np.array([0, 1]), [1.0]).items()}
    {0.0: 0.0287, 1.0: 0.0375}

    Raises:
        ValueError: shapes that do not match, labels outside 0..C-1, probabilities that are not a softmax.
    """
    import torch

    from ..losses import PMDiceLoss

    probabilities = np.asarray(probabilities, np.float64)
    label = np.asarray(label)
    if label.ndim == probabilities.ndim:
        label = label[0]
    if label.shape != probabilities.shape[1:]:
        raise ValueError(f"label {label.shape} does not match probabilities {probabilities.shape} (C, *spatial)")
    if not np.allclose(probabilities.sum(0), 1, atol=1e-2) or probabilities.min() < 0:
        raise ValueError("probabilities must be non-negative and sum to 1 over the class axis (softmax output)")
    if label.ndim == 1:                             # the loss needs at least two spatial axes
        probabilities, label = probabilities[..., None], label[..., None]
    mask = None
    label = label.astype(np.int64)
    if ignore_label is not None:
        mask = torch.from_numpy(label != ignore_label)[None, None]
        label = np.where(label == ignore_label, 0, label)
    log_p = torch.from_numpy(np.log(np.clip(probabilities, 1e-300, None)))[None]
    target = torch.from_numpy(label)[None, None]
    out = {}
    for g in [0.0] + [float(g) for g in gammas if float(g) != 0.0]:
        out[g] = float(PMDiceLoss(gamma=g)(log_p, target, loss_mask=mask))
    return out


@dataclass
class CaseFigure:
    """What one row of the figure shows (arrays of the full case; the drawing picks a 2D slice)."""

    case: str
    image: np.ndarray                 # (C_in, *spatial)
    label: np.ndarray                 # spatial
    probabilities: np.ndarray         # (C, *spatial)
    class_index: int
    losses: Dict[float, float] = field(default_factory=dict)

    @property
    def prediction(self) -> np.ndarray:
        return np.argmax(self.probabilities, 0)


def _read_dataset_json(path: Path) -> dict:
    if not path.is_file():
        raise FigureInputError(f"{path} not found (needed for the file ending and image reader)")
    try:
        return read_json(path, "dataset.json")
    except ValueError as e:
        raise FigureInputError(str(e)) from None


def _reader(dataset_json: dict, example_file: str):
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    return determine_reader_writer_from_dataset_json(dataset_json, example_file, verbose=False)()


def _case_files(images: Path, case: str, dataset_json: dict) -> List[str]:
    """The image files of ``case`` (``<case>_XXXX<ending>``), found as nnUNetv2_predict finds them."""
    from nnunetv2.utilities.utils import create_paths_fn
    ending = dataset_json["file_ending"]
    files = create_paths_fn(str(images), sorted(p.name for p in images.iterdir()), ending, case)
    if not files:
        raise FigureInputError(f"case {case!r}: no image file {case}_XXXX{ending} in {images}")
    return files


def _label_cases(labels: Path, ending: str) -> List[str]:
    if not labels.is_dir():
        raise FigureInputError(f"reference folder {labels} not found")
    cases = sorted(p.name[: -len(ending)] for p in labels.iterdir() if p.name.endswith(ending))
    if not cases:
        raise FigureInputError(f"no reference files ending in {ending} in {labels}")
    return cases


def smallest_object_cases(labels: Path, cases: Sequence[str], ending: str, dataset_json: dict, class_index: int,
                          n: int) -> List[str]:
    """The ``n`` cases whose smallest connected reference object of ``class_index`` is smallest (cc3d).

    Cases without that class are skipped; ties go to the case name.
    """
    import cc3d
    scored = []
    for case in cases:
        f = str(labels / f"{case}{ending}")
        seg, _ = _reader(dataset_json, f).read_seg(f)
        comps = cc3d.connected_components(np.ascontiguousarray(seg[0] == class_index))
        sizes = np.bincount(comps.ravel())[1:]
        if sizes.size:
            scored.append((int(sizes.min()), case))
    return [c for _, c in sorted(scored)[:n]]


def _labels_and_classes(dataset_json: dict) -> Tuple[int, Optional[int]]:
    if any(isinstance(v, (list, tuple)) for v in dataset_json["labels"].values()):
        raise FigureInputError("region datasets (sigmoid outputs) are not supported by the modulation figure; "
                               "it needs softmax probabilities of a label dataset")
    ignore = dataset_json["labels"].get("ignore")
    num_classes = len([k for k in dataset_json["labels"] if k != "ignore"])
    return num_classes, ignore


def collect_cases(images, labels, cases: Optional[Sequence[str]] = None, n: int = 3, class_index: int = 1,
                  model: Optional[str] = None, fold: str = "all", checkpoint: str = "checkpoint_final.pth",
                  probabilities: Optional[str] = None, device: str = "cpu",
                  gammas: Sequence[float] = FIGURE_GAMMAS) -> List[CaseFigure]:
    """Reads (or predicts) the probabilities of the chosen cases and computes their losses.

    Exactly one of ``model`` (a trained model folder ``<trainer>__<plans>__<configuration>`` with
    ``fold_<fold>/<checkpoint>``) and ``probabilities`` (a folder of ``nnUNetv2_predict --save_probabilities``)
    must be given.

    Raises:
        FigureInputError: a missing folder, file or case, a class index outside the dataset, both or
            neither of ``model`` and ``probabilities``.
    """
    images, labels = Path(images), Path(labels)
    if (model is None) == (probabilities is None):
        raise FigureInputError("give exactly one of a model folder (-m) and a probabilities folder (-p)")
    source = Path(model if model is not None else probabilities)
    if not source.is_dir():
        raise FigureInputError(f"{'model' if model is not None else 'probabilities'} folder {source} not found")
    if not images.is_dir():
        raise FigureInputError(f"image folder {images} not found")
    dataset_json = _read_dataset_json(source / "dataset.json")
    num_classes, ignore = _labels_and_classes(dataset_json)
    if not 0 <= class_index < num_classes:
        raise FigureInputError(f"class index {class_index} outside 0..{num_classes - 1} of {source / 'dataset.json'}")
    ending = dataset_json["file_ending"]
    available = _label_cases(labels, ending)
    if cases:
        unknown = [c for c in cases if c not in available]
        if unknown:
            raise FigureInputError(f"case(s) {', '.join(unknown)} not found in {labels} (files <case>{ending})")
        chosen = list(cases)
    else:
        chosen = smallest_object_cases(labels, available, ending, dataset_json, class_index, n)
        if not chosen:
            raise FigureInputError(f"no reference in {labels} contains class {class_index}")

    predictor = None
    if model is not None:
        if not (source / f"fold_{fold}" / checkpoint).is_file():
            raise FigureInputError(f"{source / f'fold_{fold}' / checkpoint} not found (a trained model folder "
                                   f"holds fold_<fold>/{checkpoint}; choose the fold with -f)")
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        predictor = nnUNetPredictor(device=torch.device(device), perform_everything_on_device=device != "cpu",
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(source), use_folds=(fold,), checkpoint_name=checkpoint)

    out = []
    for case in chosen:
        files = _case_files(images, case, dataset_json)
        rw = _reader(dataset_json, files[0])
        image, props = rw.read_images(files)
        label, _ = rw.read_seg(str(labels / f"{case}{ending}"))
        label = label[0]
        if predictor is not None:
            _, probs = predictor.predict_single_npy_array(image, props, None, None, True)
            probs = np.asarray(probs, np.float64)
        else:
            npz = source / f"{case}.npz"
            if not npz.is_file():
                raise FigureInputError(f"case {case!r}: {npz} not found (predict with --save_probabilities)")
            with np.load(npz) as data:
                if "probabilities" not in data:
                    raise FigureInputError(f"{npz} has no 'probabilities' array (nnU-Net's --save_probabilities)")
                probs = np.asarray(data["probabilities"], np.float64)
        if probs.shape[0] != num_classes or probs.shape[1:] != label.shape:
            raise FigureInputError(f"case {case!r}: probabilities {probs.shape} do not match {num_classes} classes "
                                   f"x reference {label.shape}")
        out.append(CaseFigure(case, image, label, probs, class_index,
                              case_losses(probs, label, gammas, ignore)))
    return out


def _view(fig_case: CaseFigure) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """2D views: display image, reference, prediction, class probability (axis-0 slice with the most class)."""
    from ..evaluation.plots import display_image
    lab, prob = fig_case.label, fig_case.probabilities[fig_case.class_index]
    pred = fig_case.prediction
    if lab.shape[0] == 1:
        k = 0
    else:
        counts = (lab == fig_case.class_index).reshape(lab.shape[0], -1).sum(1)
        k = int(np.argmax(counts)) if counts.max() > 0 else lab.shape[0] // 2
    return display_image(fig_case.image[:, k]), lab[k], pred[k], prob[k]


def draw_figure(cases: Sequence[CaseFigure], path, gammas: Sequence[float] = FIGURE_GAMMAS, title: str = "") -> Path:
    """One row per case: image, reference, prediction (Dice loss), m for each gamma (PM Dice loss)."""
    from ..evaluation.plots import pyplot, save_figure
    plt = pyplot()
    ncol = 3 + len(gammas)
    fig, axes = plt.subplots(len(cases), ncol, figsize=(2.1 * ncol, 2.7 * len(cases)), squeeze=False)
    for row, fc in zip(axes, cases):
        img, lab, pred, prob = _view(fc)
        y = (lab == fc.class_index).astype(np.float64)
        row[0].imshow(img, cmap=None if img.ndim == 3 else "gray")
        row[0].set_title(fc.case, fontsize=8)
        row[1].imshow(y, cmap="gray", vmin=0, vmax=1)
        row[1].set_title("reference", fontsize=8)
        row[2].imshow(prob, cmap="gray", vmin=0, vmax=1)
        row[2].contour(pred == fc.class_index, levels=[0.5], colors="r", linewidths=0.6)
        row[2].set_title(f"prediction\nDice loss {fc.losses[0.0]:.3f}", fontsize=8)
        for ax, g in zip(row[3:], gammas):
            ax.imshow(modulating_term(prob, y, g), cmap="inferno", vmin=0, vmax=1)
            ax.set_title(f"m, gamma {g:g}\nPM Dice loss {fc.losses[float(g)]:.3f}", fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = save_figure(fig, path)
    return path


def write_modulation_figure(out, images, labels, **kwargs) -> Tuple[Path, List[CaseFigure]]:
    """:func:`collect_cases` then :func:`draw_figure` to ``out`` (PNG); also ``out`` with ``.json``: the losses.

    Keyword arguments go to :func:`collect_cases`; ``title`` to :func:`draw_figure`.
    """
    title = kwargs.pop("title", "")
    gammas = tuple(kwargs.get("gammas", FIGURE_GAMMAS))
    cases = collect_cases(images, labels, **kwargs)
    path = draw_figure(cases, out, gammas, title)
    write_json(Path(out).with_suffix(".json"),
               {"class_index": cases[0].class_index if cases else None,
                "cases": {c.case: {"dice_loss": c.losses[0.0],
                                   "pm_dice_loss": {f"{g:g}": c.losses[float(g)] for g in gammas}}
                          for c in cases}})
    return path, cases


# ------------------------------------------------------------------------------------------------ CLI

def add_parser(sub) -> None:
    """Registers ``nnunet-pmdice modulation-figure``."""
    import argparse
    p = sub.add_parser("modulation-figure",
                       help="the paper's Figure 2 (modulating term and losses) from a trained model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-m", "--model", help="trained model folder (<trainer>__<plans>__<configuration>)")
    src.add_argument("-p", "--probabilities", help="folder of nnUNetv2_predict --save_probabilities (.npz files)")
    p.add_argument("-i", "--images", required=True, help="image folder (e.g. imagesTs)")
    p.add_argument("-l", "--labels", required=True, help="reference folder (e.g. labelsTs)")
    p.add_argument("-o", "--out", default="modulation_figure.png", help="PNG to write (default modulation_figure.png)")
    p.add_argument("-f", "--fold", default="all", help="fold of the model (default all)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    p.add_argument("--cases", nargs="+", help="case names (default: the cases with the smallest reference objects)")
    p.add_argument("-n", type=int, default=3, help="cases picked when --cases is not given (default 3)")
    p.add_argument("--class-index", type=int, default=1, help="class whose modulating term is drawn (default 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (model only; default cpu)")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    if args.n < 1:
        raise ValueError(f"-n must be >= 1, got {args.n}")
    path, cases = write_modulation_figure(args.out, args.images, args.labels, cases=args.cases, n=args.n,
                                          class_index=args.class_index, model=args.model, fold=args.fold,
                                          checkpoint=args.checkpoint, probabilities=args.probabilities,
                                          device=args.device)
    for c in cases:
        pm = ", ".join(f"gamma {g:g}: {c.losses[float(g)]:.4f}" for g in FIGURE_GAMMAS)
        print(f"{c.case}: Dice loss {c.losses[0.0]:.4f}; PM Dice loss {pm}")
    print(path)
    return 0
