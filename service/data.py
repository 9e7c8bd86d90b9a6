"""Data files for the CLI: .npy, .npz and .csv, validated against a model's likelihood.

A file spec is a path, optionally followed by `:key` to pick an array out of an .npz
(`binarized_mnist.npz:valid_x`). Without a key an .npz gives `x`, else the array for the role
(`train_x` when training, `valid_x` for validation and evaluation), else its only array.
Packed bits (uint8 rows of ceil(D/8) bytes, with `n_dims` stored beside them as in ../shared/data)
are unpacked. Every value is checked: a wrong shape, NaN/Inf, or a value outside the likelihood's
support is refused with a message naming the row and column (counting from 0).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .made.likelihoods import Likelihood

ROLE_KEYS = {"train": "train_x", "valid": "valid_x", "eval": "valid_x"}


class DataError(ValueError):
    """Input data that cannot be used: unreadable, the wrong shape, or values the model cannot score.
    `row` and `column` (from 0) locate a bad value when there is one."""

    def __init__(self, message: str, row: int | None = None, column: int | None = None):
        super().__init__(message)
        self.row, self.column = row, column


def split_spec(spec: str) -> tuple[Path, str | None]:
    path, sep, key = spec.rpartition(":")
    if sep and path.endswith(".npz") and key:
        return Path(path), key
    return Path(spec), None


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_array(spec: str, role: str = "eval") -> tuple[np.ndarray, str]:
    """The (N, D) array a spec names, and a description of where it came from. An .npy is memory-mapped,
    so a large file is streamed by the caller rather than read whole."""
    path, key = split_spec(spec)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            source = str(path)
        elif suffix == ".npz":
            array, source = _from_npz(path, key, role)
        elif suffix == ".csv":
            array, source = _from_csv(path), str(path)
        else:
            raise DataError(f"{path}: unsupported data format {suffix!r} (use .npy, .npz or .csv)")
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:  # numpy refuses object arrays (pickles) with ValueError
        raise DataError(f"{path} could not be read: {exc}") from None
    if array.ndim != 2:
        raise DataError(f"{source}: expected a 2-D array (rows x dimensions), got shape {list(array.shape)}")
    if array.dtype.kind not in "biuf":
        raise DataError(f"{source}: expected numbers, got dtype {array.dtype}")
    return array, source


def _from_npz(path: Path, key: str | None, role: str) -> tuple[np.ndarray, str]:
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if key is None:
            candidates = [k for k in ("x", ROLE_KEYS.get(role)) if k in keys]
            arrays = [k for k in keys if archive[k].ndim == 2]
            if candidates:
                key = candidates[0]
            elif len(arrays) == 1:
                key = arrays[0]
            else:
                raise DataError(f"{path}: say which array to use as {path}:KEY; it holds {keys}")
        if key not in keys:
            raise DataError(f"{path} has no array {key!r}; it holds {keys}")
        array = archive[key]
        if "n_dims" in keys and array.dtype == np.uint8 and array.ndim == 2:
            n_dims = int(archive["n_dims"])
            if array.shape[1] != n_dims and array.shape[1] == -(-n_dims // 8):
                array = np.unpackbits(array, axis=1)[:, :n_dims]
    return array, f"{path}:{key}"


def _from_csv(path: Path) -> np.ndarray:
    rows: list[list[float]] = []
    with open(path, newline="") as f:
        for line_number, cells in enumerate(csv.reader(f)):
            if not cells or all(not c.strip() for c in cells):
                continue
            try:
                rows.append([float(c) for c in cells])
            except ValueError:
                if line_number == 0 and not rows:
                    continue  # a header line
                bad = next(c for c in cells if not _is_float(c))
                raise DataError(
                    f"{path}: line {line_number + 1} has {bad!r}, which is not a number"
                ) from None
            if len(rows[-1]) != len(rows[0]):
                raise DataError(
                    f"{path}: line {line_number + 1} has {len(rows[-1])} values; "
                    f"earlier rows have {len(rows[0])}"
                )
    if not rows:
        raise DataError(f"{path} holds no data rows")
    return np.asarray(rows, dtype=np.float64)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_shape(array: np.ndarray, n_dims: int, source: str = "input") -> None:
    """At least one row of n_dims values (what `validate` checks first; a server checks it on its own
    before a request joins a batch, and the values in the batch)."""
    if array.ndim != 2:
        raise DataError(f"{source}: expected a 2-D array (rows x dimensions), got shape {list(array.shape)}")
    if array.shape[0] == 0:
        raise DataError(f"{source}: no rows")
    if array.shape[1] != n_dims:
        raise DataError(f"{source}: rows have {array.shape[1]} values; the model expects {n_dims}")


def validate(
    array: np.ndarray,
    likelihood: Likelihood,
    n_dims: int,
    source: str = "input",
    row_offset: int = 0,
    allow_missing: bool = False,
) -> torch.Tensor:
    """(N, D) float32 tensor of rows that the model can score; DataError naming row and column if not.
    With allow_missing, NaN marks a missing value (kept as NaN); Inf is still refused."""
    check_shape(array, n_dims, source)
    # The checks run in numpy: on one row each numpy call costs a fraction of a torch call (51 us -> 14 us
    # for a 784-value row); a served request's rows are validated on the event loop, or in the compute
    # thread with the rest of their batch.
    array = np.ascontiguousarray(array)
    floating = array.dtype.kind == "f"
    values = array.astype(np.float32, copy=False)
    if not values.flags.writeable:  # a memory map or a read-only buffer: torch wants writable memory
        values = values.copy()
    missing = np.isnan(values) if allow_missing and floating else None
    if floating:  # integers are always finite, and exact in float32 up to 2^24
        finite = np.isfinite(values) if missing is None else np.isfinite(values) | missing
        if not finite.all():
            row, col = _first_false(finite)
            raise DataError(
                f"{source}: value {array[row, col].item()!r} at row {row + row_offset}, column {col} "
                "is not a finite number (NaN, Inf, or beyond float32)",
                row=row + row_offset,
                column=col,
            )
    # The support is checked on the values as sent: 2.0000001 in float64 is not an integer category,
    # though float32 would round it to one. Integer input is checked as it is, not as its float copy.
    as_sent = array.dtype == np.float64 or array.dtype.kind in "iu"
    supported = likelihood.in_support(array if as_sent else values)
    if missing is not None:
        supported |= missing
    if not supported.all():
        row, col = _first_false(supported)
        raise DataError(
            f"{source}: value {array[row, col].item()!r} at row {row + row_offset}, column {col} "
            f"is outside the support of the {likelihood.name} likelihood ({likelihood.support})",
            row=row + row_offset,
            column=col,
        )
    return torch.from_numpy(values)


def _first_false(ok: np.ndarray) -> tuple[int, int]:
    row, col = np.argwhere(~ok)[0].tolist()
    return row, col


def load(spec: str, likelihood: Likelihood, n_dims: int | None = None, role: str = "eval") -> torch.Tensor:
    """The whole file as one validated (N, D) float32 tensor (n_dims None: take the file's width)."""
    array, source = open_array(spec, role)
    return validate(np.asarray(array), likelihood, n_dims or array.shape[1], source)


def iter_batches(
    array: np.ndarray, source: str, likelihood: Likelihood, n_dims: int, batch_rows: int
) -> Iterator[torch.Tensor]:
    """Validated (<=batch_rows, D) tensors of an array from `open_array`; a memory-mapped .npy is read one
    batch at a time, and error messages count rows from the start of the file."""
    if array.shape[0] == 0:
        raise DataError(f"{source}: no rows")
    if array.shape[1] != n_dims:
        raise DataError(f"{source}: rows have {array.shape[1]} values; the model expects {n_dims}")
    for start in range(0, array.shape[0], batch_rows):
        chunk = np.asarray(array[start : start + batch_rows])
        yield validate(chunk, likelihood, n_dims, source, row_offset=start)
