"""The `made` command: train, merge, eval, score, calibrate, sample and serve.

Errors a user can fix (bad data, a bad checkpoint, impossible options) print one line,
`made: error: ...`, and exit with status 2; nothing else prints a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError
from tqdm import tqdm

from . import __version__, calibration, checkpoint, data, logs
from .calibration import ContextCounts
from .checkpoint import CheckpointError
from .context_model import ContextModel
from .data import DataError
from .devices import resolve_device
from .made import (
    ACTIVATIONS,
    LIKELIHOODS,
    MASK_RESAMPLING,
    MADEConfig,
    MADEDensity,
    make_generator,
    make_likelihood,
    merge,
    sample,
)
from .made.fast_sampling import sample_fast
from .made.masks import ORDERINGS
from .settings import Settings
from .training import LR_SCHEDULES, TrainConfig, standardisation, train

log = logging.getLogger("made.cli")
SCORE_BATCH_ROWS = 4096
# `made train` flag -> the MADEConfig field it sets (n_dims and the likelihood come from the data and the
# head options): the architecture is built whole from these, and validated once, by MADEConfig.
ARCHITECTURE_FLAGS = {
    "hidden": "hidden_sizes",
    "masks": "n_masks",
    "eval_masks": "eval_masks",
    "fresh_masks": "fresh_masks",
    "resample": "mask_resampling",
    "order": "order",
    "direct": "direct_connections",
    "mask_conditioning": "mask_conditioning",
    "activation": "activation",
    "dropout": "dropout",
    "seed": "seed",
}
# `made serve` flags: each a Settings field, with its description and default from there
SERVE_FLAGS = (
    "model_repository",
    "host",
    "port",
    "device",
    "workers",
    "max_batch_rows",
    "max_batch_delay_ms",
    "max_queue_requests",
    "request_timeout_s",
    "read_timeout_s",
    "keep_alive_s",
    "max_header_bytes",
)


class DEFAULTS(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class UsageError(Exception):
    """Options that cannot work together; reported like argparse's own errors."""


def _problems(exc: ValidationError, flags: dict[str, str] | None = None) -> str:
    """One line naming each invalid option (as the flag that sets it, where there is one)."""
    names = {field: flag for flag, field in (flags or {}).items()}
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        where = f"--{names[where].replace('_', '-')}" if where in names else where
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return "; ".join(parts)


def _order(text: str):
    if text in ORDERINGS:
        return text
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(ORDERINGS)} or a comma-separated permutation of 0..D-1"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="made", description="MADE density estimation: train, evaluate, sample."
    )
    parser.add_argument("--version", action="version", version=f"made-service {__version__}")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="default: info (for serve: MADE_LOG_LEVEL)",
    )
    parser.add_argument(
        "--log-format", choices=["text", "json"], help="default: text (for serve: MADE_LOG_FORMAT)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_train_parser(commands)

    p = commands.add_parser(
        "merge",
        help="combine one-mask models into one mixture model (a checkpoint)",
        formatter_class=DEFAULTS,
        description="The uniform mixture p(x) = 1/K sum_k p_k(x) of K one-mask models of the "
        "same data, stored as one K-mask model (docs/model.md).",
    )
    p.add_argument(
        "members", nargs="+", metavar="MODEL", help="checkpoint directories of the one-mask models"
    )
    p.add_argument("--out", required=True, help="checkpoint directory to write (e.g. models/mine/2)")
    p.add_argument(
        "--data",
        help="held-out rows to evaluate the mixture on and calibrate its anomaly threshold "
        "(default: the first member's validation file, if it has one)",
    )
    p.add_argument(
        "--context-data",
        help="training rows to fit the anomaly score's context model on (default: the first member's "
        "training file, if it is still there)",
    )
    p.add_argument(
        "--weights-dtype",
        default="float32",
        choices=sorted(checkpoint.DTYPES),
        help="storage dtype in the checkpoint (evaluation is always float32)",
    )

    p = commands.add_parser(
        "eval", help="mean negative log-likelihood of a data file, as one JSON line", formatter_class=DEFAULTS
    )
    _model_args(p)
    p.add_argument("--data", required=True, help=".npy, .npz[:key] (default key: x, else valid_x) or .csv")

    p = commands.add_parser(
        "score", help="write log p(x) of every row to an .npy file", formatter_class=DEFAULTS
    )
    _model_args(p)
    p.add_argument("--data", required=True, help=".npy, .npz[:key] (default key: x, else valid_x) or .csv")
    p.add_argument("--out", required=True, help="output .npy: one float64 log-probability (nats) per row")
    p.add_argument("--batch-rows", type=int, default=SCORE_BATCH_ROWS)

    p = commands.add_parser(
        "calibrate", help="recompute anomaly calibration from normal held-out data", formatter_class=DEFAULTS
    )
    _model_args(p)
    p.add_argument("--data", required=True, help="rows the model should call normal (not its training data)")
    p.add_argument(
        "--context-data",
        help="training rows to fit the context model of the nll_or_context score on (default: the training "
        "file the checkpoint records, if it is still there)",
    )
    p.add_argument(
        "--default-score",
        choices=calibration.SCORES,
        help="the anomaly score requests get unless they ask for another (default: nll_or_context where "
        "the rows are 0/1 and there are training rows for its context model, else nll; docs/anomaly.md)",
    )
    p.add_argument(
        "--fpr",
        type=float,
        default=calibration.DEFAULT_FPR,
        help="default false-positive rate for the anomaly threshold",
    )

    p = commands.add_parser(
        "serve",
        help="run the REST service on a model repository",
        description="Every option also reads MADE_<NAME> from the environment "
        "(e.g. MADE_MAX_BATCH_ROWS); flags win. See docs/api.md.",
    )
    for name in SERVE_FLAGS:
        field = Settings.model_fields[name]
        p.add_argument(
            f"--{name.replace('_', '-')}",
            metavar=name.upper(),
            help=f"{field.description or name.replace('_', ' ')} (default: {field.default})",
        )

    p = commands.add_parser("sample", help="draw samples into an .npy file", formatter_class=DEFAULTS)
    _model_args(p)
    p.add_argument("-n", type=int, required=True, help="number of samples")
    p.add_argument(
        "--sampler",
        choices=["fast", "reference"],
        default="fast",
        help="fast: about one forward pass per sample; reference: D passes (same samples)",
    )
    p.add_argument("--seed", type=int, default=None, help="same seed, same samples (default: random)")
    p.add_argument(
        "--out", required=True, help="output .npy: int64 for bernoulli and categorical, float32 otherwise"
    )
    return parser


def _add_train_parser(commands) -> None:
    p = commands.add_parser(
        "train", help="train a model and write a checkpoint directory", formatter_class=DEFAULTS
    )
    p.add_argument("--data", required=True, help="training data: .npy, .npz[:key] or .csv")
    p.add_argument("--out", required=True, help="checkpoint directory to write (e.g. models/mine/1)")
    valid = p.add_mutually_exclusive_group()
    valid.add_argument("--valid", help="validation data (default: the .npz's valid_x, else --valid-fraction)")
    valid.add_argument(
        "--valid-fraction",
        type=float,
        default=None,
        help="hold out this fraction of --data (default: 0.1 when there is no --valid)",
    )
    p.add_argument(
        "--likelihood", default="bernoulli", choices=LIKELIHOODS, help="distribution of each x_d given x_<d"
    )
    p.add_argument("--categories", type=int, help="values per dimension for --likelihood categorical")
    p.add_argument("--components", type=int, default=10, help="mixture components for --likelihood mog")
    p.add_argument("--hidden", type=int, nargs="+", default=[500], metavar="H", help="hidden layer sizes")
    p.add_argument("--masks", type=int, default=1, help="size of the stored mask set (1: a plain MADE)")
    p.add_argument("--eval-masks", type=int, help="default ensemble size at evaluation (default: every mask)")
    p.add_argument("--fresh-masks", action="store_true", help="train with a new mask every minibatch")
    p.add_argument("--resample", default="both", choices=MASK_RESAMPLING, help="what differs between masks")
    p.add_argument("--order", type=_order, default="natural", help="ordering of the first mask")
    p.add_argument("--direct", action="store_true", help="direct input-to-output connections")
    p.add_argument("--mask-conditioning", action="store_true", help="learned mask-dependent bias per layer")
    p.add_argument("--activation", default="relu", choices=sorted(ACTIVATIONS), help="hidden activation")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout on hidden units while training")
    p.add_argument("--epochs", type=int, default=100, help="maximum number of epochs")
    p.add_argument("--batch-size", type=int, default=100, help="rows per minibatch (one mask each)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--weight-decay", type=float, default=0.0, help="Adam L2 weight decay")
    p.add_argument(
        "--lr-schedule",
        default="cosine",
        choices=LR_SCHEDULES,
        help="cosine: anneal to 0 over --epochs; plateau: halve when validation stalls",
    )
    p.add_argument("--patience", type=int, default=20, help="early stopping patience in epochs (0: off)")
    p.add_argument("--valid-masks", type=int, default=1, help="masks averaged for per-epoch validation")
    p.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this value")
    p.add_argument(
        "--ema-decay",
        type=float,
        default=0.0,
        help="validate and keep an exponential moving average of the weights with this decay per step, "
        "e.g. 0.999 (0: off)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=0.0,
        help="time budget: stop after the epoch that ends past it; cosine anneals over it or --epochs, "
        "whichever ends first (0: off)",
    )
    p.add_argument("--input-shape", type=int, nargs="+", help="shape of one row as an image, e.g. 28 28")
    p.add_argument(
        "--weights-dtype",
        default="float32",
        choices=sorted(checkpoint.DTYPES),
        help="storage dtype in the checkpoint (evaluation is always float32)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seeds weights, masks, shuffling and the hold-out split"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal; log lines otherwise)",
    )


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint directory (e.g. models/binarized-mnist/1)")
    p.add_argument("--masks", type=int, default=None, help="ensemble size (default: the model's default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["made", *argv])  # recorded in checkpoints: how to make the model again
    logs.configure(args.log_level or "info", args.log_format or "text")
    try:
        return COMMANDS[args.command](args)
    except (DataError, CheckpointError, UsageError, ValueError) as exc:  # MergeError is a ValueError
        print(f"made: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("made: interrupted", file=sys.stderr)
        return 130


# ---- train --------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    head = make_likelihood(args.likelihood, categories=args.categories, components=args.components)
    train_x, valid_x, valid_spec = _training_data(args, head)
    architecture = _architecture(args, train_x.shape[1], head.spec())
    if args.input_shape and math.prod(args.input_shape) != architecture.n_dims:
        raise UsageError(f"--input-shape {args.input_shape} does not hold {architecture.n_dims} values")
    if not 1 <= args.valid_masks <= architecture.n_masks:
        raise UsageError(f"--valid-masks must be between 1 and --masks ({architecture.n_masks})")
    shift, scale = standardisation(train_x) if head.real_valued else (None, None)
    model = MADEDensity.from_config(architecture, shift=shift, scale=scale).to(device)
    log.info(
        "training",
        extra={
            "rows": len(train_x),
            "dims": architecture.n_dims,
            "device": str(device),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
    )
    result = train(model, train_x, valid_x, _train_config(args))
    masks = architecture.eval_masks
    context = _context_counts(model, train_x, args.data, args.input_shape)
    valid_scores, code_lengths = calibration.held_out_scores(
        model, valid_x.split(SCORE_BATCH_ROWS), masks, _context_model(model, context, args.input_shape)
    )
    record = _training_record(args, model, result, valid_spec, len(train_x), valid_scores)
    calibrated = calibration.calibrate(
        valid_scores,
        masks=masks,
        code_length=code_lengths,
        context=context,
        data_file=valid_spec or f"{args.data} (held-out {args.valid_fraction or 0.1:g})",
        data_sha256=record["valid_sha256"] or record["data_sha256"],
    )
    checkpoint.save(
        model,
        args.out,
        input_shape=args.input_shape,
        training=record,
        calibration=calibrated,
        weights_dtype=args.weights_dtype,
    )
    print(
        json.dumps(
            {
                "out": args.out,
                "best_valid_nll": round(record["best_valid_nll"], 4),
                "masks": masks,
                "epochs": result.epochs_run,
                "best_epoch": result.best_epoch,
                "seconds": round(result.seconds, 1),
            }
        )
    )
    return 0


def _training_data(args, head) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    """(training rows, validation rows, the validation file or None when held out of the training data)."""
    train_x = data.load(args.data, head, role="train")
    valid_spec = args.valid
    if valid_spec is None and args.valid_fraction is None:
        valid_spec = _companion_valid(args.data)
    if valid_spec is None:
        train_x, valid_x = _hold_out(train_x, args.valid_fraction or 0.1, args.seed)
        log.info("validation held out of the training data", extra={"rows": len(valid_x)})
        return train_x, valid_x, None
    valid_x = data.load(valid_spec, head, n_dims=train_x.shape[1], role="valid")
    log.info("validation data", extra={"source": valid_spec, "rows": len(valid_x)})
    return train_x, valid_x, valid_spec


def _architecture(args, n_dims: int, likelihood: dict) -> MADEConfig:
    options = {field: getattr(args, flag) for flag, field in ARCHITECTURE_FLAGS.items()}
    try:
        return MADEConfig(n_dims=n_dims, likelihood=likelihood, **options)
    except ValidationError as exc:
        raise UsageError(_problems(exc, ARCHITECTURE_FLAGS)) from None


def _train_config(args) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        lr_schedule=args.lr_schedule,
        patience=args.patience,
        valid_masks=args.valid_masks,
        grad_clip=args.grad_clip,
        ema_decay=args.ema_decay,
        max_seconds=args.max_seconds,
        seed=args.seed,
        progress=args.progress,
    )


def _training_record(args, model, result, valid_spec: str | None, train_rows: int, valid_scores) -> dict:
    """How the weights were made, for the checkpoint: enough to make them again and to trust them."""
    return {
        "command": args.command_line,
        "data_file": args.data,
        "data_sha256": data.sha256_of(data.split_spec(args.data)[0]),
        "valid_file": valid_spec,
        "valid_sha256": data.sha256_of(data.split_spec(valid_spec)[0]) if valid_spec else None,
        "train_rows": train_rows,
        "valid_rows": len(valid_scores),
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_valid_nll": float(valid_scores.mean()),
        "best_valid_nll_per_epoch_masks": result.best_valid_nll,
        "valid_masks": model.config.eval_masks,
        "seed": args.seed,
        "optimizer": {
            "name": "adam",
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "lr_schedule": args.lr_schedule,
            "batch_size": args.batch_size,
            "ema_decay": args.ema_decay,
            "max_seconds": args.max_seconds,
        },
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(model.device),
        "train_seconds": round(result.seconds, 1),
        "package_version": __version__,
        "torch_version": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "history": [
            {"epoch": h.epoch, "train_nll": round(h.train_nll, 4), "valid_nll": round(h.valid_nll, 4)}
            for h in result.history
        ],
    }


def _companion_valid(spec: str) -> str | None:
    """An .npz holding train_x and valid_x (as in ../shared/data) validates on its own valid_x."""
    path, key = data.split_spec(spec)
    if path.suffix == ".npz" and key in (None, "train_x"):
        with np.load(path, allow_pickle=False) as archive:
            if "valid_x" in archive.files and "x" not in archive.files:
                return f"{path}:valid_x"
    return None


def _hold_out(x: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not 0 < fraction < 1:
        raise UsageError("--valid-fraction must be between 0 and 1")
    n_valid = max(1, int(round(len(x) * fraction)))
    if n_valid >= len(x):
        raise UsageError(f"{len(x)} rows are too few to hold out a validation fraction of {fraction}")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order[n_valid:]], x[order[:n_valid]]


# ---- eval / score / sample --------------------------------------------------------------------------------
def _load(args):
    device = resolve_device(args.device)
    model, config = checkpoint.load(args.model, device=device)
    masks = model.resolve_masks(args.masks)
    return model, config, masks


def _file_rows(model, spec: str, batch_rows: int):
    """(rows in the file, the array's source, iterator of its validated (<= batch_rows, D) batches), reading
    the file once and a batch at a time where the format allows (a memory-mapped .npy); a progress bar on a
    terminal."""
    array, source = data.open_array(spec, role="eval")

    def batches():
        rows = data.iter_batches(array, source, model.likelihood, model.n_dims, batch_rows)
        with tqdm(total=len(array), unit="row", disable=not sys.stderr.isatty(), file=sys.stderr) as bar:
            for batch in rows:
                yield batch
                bar.update(len(batch))

    return len(array), source, batches()


def _log_probs(model, spec: str, masks: int, batch_rows: int):
    """(rows in the file, the array's source, iterator of (start row, log p of a batch))."""
    n, source, rows = _file_rows(model, spec, batch_rows)

    def batches():
        start = 0
        for log_p in model.log_prob_batches(rows, masks):
            yield start, log_p.numpy()
            start += len(log_p)

    return n, source, batches()


def _context_counts(
    model, rows: torch.Tensor | None, source: str | None, input_shape
) -> ContextCounts | None:
    """The context model of the training rows, for the nll_or_context anomaly score: for 0/1 rows only."""
    if rows is None or model.likelihood.name != "bernoulli":
        return None
    path = data.split_spec(source)[0]
    counts = ContextCounts.fit(rows, input_shape, data_file=source, data_sha256=data.sha256_of(path))
    log.info("context model", extra={"rows": len(rows), "template": counts.template, "source": source})
    return counts


def _context_model(model, counts: ContextCounts | None, input_shape) -> ContextModel | None:
    return None if counts is None else counts.model(model.n_dims, input_shape, device=model.device)


def _context_rows(model, spec: str | None, config) -> tuple[torch.Tensor | None, str | None]:
    """(rows, source) to fit the context model on: `spec`, else the training file the checkpoint records
    (a merged model's first member's) if it is still there; (None, None) when there is neither."""
    if model.likelihood.name != "bernoulli":
        if spec is not None:
            raise UsageError("--context-data is for models of 0/1 rows (the bernoulli likelihood)")
        return None, None
    if spec is None:
        spec = _recorded_training_file(config)
        if spec is None or not data.split_spec(spec)[0].is_file():
            return None, None
    return data.load(spec, model.likelihood, n_dims=model.n_dims, role="train").to(model.device), spec


def _recorded_training_file(config) -> str | None:
    training = config.training
    if training is None:
        return None
    if training.data_file:
        return training.data_file
    members = (training.model_extra or {}).get("members") or []
    return members[0].get("data_file") if members and isinstance(members[0], dict) else None


def _held_out_scores(model, spec: str, masks: int, context: ContextCounts | None, input_shape):
    """(source, NLL (N,), code lengths (N,) or None) of a held-out data file, a batch at a time."""
    _, source, rows = _file_rows(model, spec, SCORE_BATCH_ROWS)
    nll, code_lengths = calibration.held_out_scores(
        model, rows, masks, _context_model(model, context, input_shape)
    )
    return source, nll, code_lengths


def cmd_eval(args) -> int:
    model, _, masks = _load(args)
    n, _, batches = _log_probs(model, args.data, masks, SCORE_BATCH_ROWS)
    nll = -sum(float(log_p.sum()) for _, log_p in batches) / n
    print(
        json.dumps({"nll": nll, "bits_per_dim": nll / (model.n_dims * math.log(2)), "n": n, "masks": masks})
    )
    return 0


def cmd_score(args) -> int:
    model, _, masks = _load(args)
    n, _, batches = _log_probs(model, args.data, masks, args.batch_rows)
    out_path = Path(args.out)
    tmp = out_path.with_name(out_path.name + ".partial.npy")
    started = time.monotonic()
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float64, shape=(n,))
        for start, log_p in batches:
            out[start : start + len(log_p)] = log_p
        out.flush()
        del out
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info(
        "scored",
        extra={
            "rows": n,
            "masks": masks,
            "out": str(out_path),
            "seconds": round(time.monotonic() - started, 2),
        },
    )
    return 0


def cmd_merge(args) -> int:
    loaded = [checkpoint.load(path) for path in args.members]
    shapes = {tuple(config.input_shape or ()) for _, config in loaded}
    if len(shapes) > 1:
        raise UsageError(f"the models have different input shapes: {sorted(shapes)}")
    mixture = merge([model for model, _ in loaded])
    valid_spec = args.data or _member_valid_file(loaded[0][1])
    record = {
        "command": args.command_line,
        "members": [
            {
                "path": path,
                **(
                    config.training.model_dump(exclude_none=True, exclude={"history"})
                    if config.training
                    else {}
                ),
            }
            for path, (_, config) in zip(args.members, loaded, strict=True)
        ],
        "parameters": sum(p.numel() for p in mixture.parameters()),
        "package_version": __version__,
        "torch_version": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    summary, calibrated = {"out": args.out, "masks": mixture.n_masks}, None
    if valid_spec:  # evaluate and calibrate the model as stored (int8 storage rounds the weights)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint.save(mixture, tmp, weights_dtype=args.weights_dtype)
            stored, _ = checkpoint.load(tmp)
        input_shape = loaded[0][1].input_shape
        context = _context_counts(
            stored, *_context_rows(stored, args.context_data, loaded[0][1]), input_shape
        )
        source, scores, code_lengths = _held_out_scores(
            stored, valid_spec, stored.n_masks, context, input_shape
        )
        sha = data.sha256_of(data.split_spec(valid_spec)[0])
        record.update(
            valid_file=source,
            valid_sha256=sha,
            valid_rows=len(scores),
            best_valid_nll=float(scores.mean()),
            valid_masks=stored.n_masks,
        )
        calibrated = calibration.calibrate(
            scores,
            masks=stored.n_masks,
            code_length=code_lengths,
            context=context,
            data_file=source,
            data_sha256=sha,
        )
        summary["valid_nll"] = round(float(scores.mean()), 4)
    # Written once, complete: a server watching the repository never sees an uncalibrated version.
    checkpoint.save(
        mixture,
        args.out,
        input_shape=loaded[0][1].input_shape,
        training=record,
        calibration=calibrated,
        weights_dtype=args.weights_dtype,
    )
    print(json.dumps(summary))
    return 0


def _member_valid_file(config: checkpoint.CheckpointConfig) -> str | None:
    """The validation file a member recorded, when it is still where it was."""
    spec = config.training.valid_file if config.training else None
    if spec and " " not in spec and data.split_spec(spec)[0].is_file():
        return spec
    return None


def cmd_calibrate(args) -> int:
    if not 0 < args.fpr < 1:
        raise UsageError("--fpr must be between 0 and 1")
    model, config, masks = _load(args)
    rows, context_source = _context_rows(model, args.context_data, config)
    context = _context_counts(model, rows, context_source, config.input_shape)
    if context is None and args.default_score == "nll_or_context":
        raise UsageError(
            "--default-score nll_or_context needs 0/1 rows and training rows for its context model "
            "(--context-data, or a training file the checkpoint records)"
        )
    if context is None:
        log.warning("no context model (0/1 training rows): calibrated the nll score only")
    source, scores, code_lengths = _held_out_scores(model, args.data, masks, context, config.input_shape)
    path = data.split_spec(args.data)[0]
    config.calibration = calibration.calibrate(
        scores,
        masks=masks,
        code_length=code_lengths,
        context=context,
        data_file=source,
        data_sha256=data.sha256_of(path),
        default_fpr=args.fpr,
        default_score=args.default_score,
    )
    checkpoint.write_config(args.model, config)
    print(json.dumps(config.calibration.summary()))
    return 0


def cmd_serve(args) -> int:
    from .api.server import serve

    flags = (*SERVE_FLAGS, "log_level", "log_format")
    overrides = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise UsageError(_problems(exc)) from None
    # Worker processes build their settings from the environment: hand the flags on through it.
    for name, value in overrides.items():
        os.environ[f"MADE_{name.upper()}"] = str(value)
    serve(settings)
    return 0


def cmd_sample(args) -> int:
    if args.n < 1:
        raise UsageError("-n must be at least 1")
    model, _, masks = _load(args)
    generator = make_generator(args.seed, model.device)
    draw = sample_fast if args.sampler == "fast" else sample
    samples = draw(model, args.n, masks=masks, generator=generator).cpu().numpy()
    np.save(args.out, model.likelihood.cast_samples(samples))  # the dtype the HTTP API answers with
    log.info(
        "sampled",
        extra={"n": args.n, "masks": masks, "seed": args.seed, "sampler": args.sampler, "out": args.out},
    )
    return 0


COMMANDS = {
    "train": cmd_train,
    "merge": cmd_merge,
    "eval": cmd_eval,
    "score": cmd_score,
    "calibrate": cmd_calibrate,
    "sample": cmd_sample,
    "serve": cmd_serve,
}

if __name__ == "__main__":
    sys.exit(main())
