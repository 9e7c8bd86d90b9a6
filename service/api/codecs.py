"""Request bodies in, response bodies out: JSON (orjson), .npy (numpy, never pickles) and PNG grids."""

from __future__ import annotations

import io
import math
import threading
from tokenize import TokenError

import numpy as np
import orjson
import simdjson
from PIL import Image
from starlette.requests import Request
from starlette.responses import Response

from .errors import (
    ClientDisconnected,
    InvalidInput,
    MalformedRequest,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
)

JSON = "application/json"
NPY = "application/x-npy"
PNG = "image/png"


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) one over `limit` bytes whether or not it declares its length, and (415) one
    with a Content-Encoding: bodies are read as sent, never decompressed."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not accepted: send the body uncompressed",
            headers={"Accept-Encoding": "identity"},  # RFC 7694
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"request body of {int(declared)} bytes is over the limit of {limit} bytes", limit=limit
        )
    # ASGI messages read as they come: Request.stream() is an async generator, which costs the event loop
    # more than the read itself for a small body.
    receive = request.receive
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected(f"the client disconnected after {size} bytes of its body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes", limit=limit)
        if not message.get("more_body", False):
            return b"".join([*chunks, chunk]) if chunks else chunk
        chunks.append(chunk)


def content_type(request: Request) -> str:
    return request.headers.get("content-type", JSON).split(";")[0].strip().lower() or JSON


def wants(request: Request, *offered: str) -> str:
    """The representation to answer with, from the Accept header; the first offered one by default."""
    accept = request.headers.get("accept", "")
    if not accept or "*/*" in accept:
        return offered[0]
    for media in (part.split(";")[0].strip().lower() for part in accept.split(",")):
        if media in offered:
            return media
        if media == "application/*" and any(o.startswith("application/") for o in offered):
            return next(o for o in offered if o.startswith("application/"))
    raise NotAcceptable(f"cannot answer with {accept!r}; this route offers {', '.join(offered)}")


def parse_json(body: bytes) -> dict:
    if not body:
        raise MalformedRequest("empty body; expected a JSON object")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedRequest(f"expected a JSON object, got {type(value).__name__}")
    return value


# A simdjson parser keeps the buffers it grew for its largest document, and allocating them is most of the
# cost of a fresh one (20 ms of 31 ms for 1,024 MNIST rows): one per thread is reused for bodies up to this
# size, so a 100 MB body does not hold 100s of MB for the life of the server.
REUSED_PARSER_BYTES = 16 * 1024 * 1024
_parsers = threading.local()


def _parser(size: int) -> simdjson.Parser:
    if size > REUSED_PARSER_BYTES:
        return simdjson.Parser()
    if not hasattr(_parsers, "parser"):
        _parsers.parser = simdjson.Parser()
    return _parsers.parser


def numeric_rows_from_json(body: bytes, field: str = "inputs") -> tuple[np.ndarray, dict] | None:
    """(rows, the object's other members) of a JSON object whose `field` is a non-empty list of equal-length
    rows of numbers only, read by simdjson straight into an array: no Python object per value,
    ~4x faster than orjson + numpy at 1 row and at 1,024 rows. None for any other body (malformed JSON,
    nulls, booleans, ragged or nested rows, a repeated key): rows_from_json reads those, and names what
    is wrong, so both ways accept exactly the same bodies and give the same numbers."""
    try:
        # RuntimeError: the parser's last document is still referenced (only after an unexpected error)
        document = _parser(len(body)).parse(body)
        if not isinstance(document, simdjson.Object):
            return None
        # An object of one member cannot repeat a key, and has no others (most bodies: {"inputs": ...}).
        keys = [field] if len(document) == 1 else list(document.keys())
        rows = document.get(field)
        if not isinstance(rows, simdjson.Array) or (len(keys) > 1 and len(set(keys)) != len(keys)):
            return None
        n = len(rows)
        # Every "[" of the body opens the list or one of its rows: no nested lists (which as_buffer would
        # flatten) and none anywhere else; a "[" inside another member's string only costs the fast way.
        if n == 0 or body.count(b"[") != n + 1:
            return None
        first = rows[0]
        if not isinstance(first, simdjson.Array) or (width := len(first)) == 0:
            return None
        if n > 1 and not all(isinstance(row, simdjson.Array) and len(row) == width for row in rows):
            return None
        values = _numbers(rows)
        others = {key: _python(document[key]) for key in keys if key != field} if len(keys) > 1 else {}
    except (ValueError, TypeError, KeyError, RuntimeError):
        return None
    return values.reshape(n, width), others


def _numbers(rows: simdjson.Array) -> np.ndarray:
    """int64 if every value is written as an integer, else float64: the dtypes numpy gives the same values
    from orjson, so validation and its messages ("value 2 at row 0") do not depend on the way taken."""
    try:
        return np.frombuffer(rows.as_buffer(of_type="i"), dtype=np.int64)
    except (TypeError, ValueError):  # a value written as a float (or too big for int64)
        return np.frombuffer(rows.as_buffer(of_type="d"), dtype=np.float64)  # TypeError: not a number


def _python(value):
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def rows_from_json(value, field: str = "inputs") -> np.ndarray:
    """(N, D) int64 (all integers) or float64 from a list of equal-length lists of numbers. true/false
    count as 1/0 (JSON has no bit type). null becomes NaN: a missing value (log-prob marginalises it;
    routes that need complete rows refuse it). Integer rows stay integers: validating them needs no copy."""
    if not isinstance(value, list):
        raise InvalidInput(f"'{field}' must be a list of rows (lists of numbers)", field=field)
    if not value:
        raise InvalidInput(f"'{field}' is empty: send at least one row", field=field)
    for i, row in enumerate(value):
        if not isinstance(row, list):
            raise InvalidInput(f"'{field}' row {i} is not a list of numbers", field=field, row=i)
    width = len(value[0])
    for i, row in enumerate(value):
        if len(row) != width:
            raise InvalidInput(
                f"'{field}' is ragged: row {i} has {len(row)} values, row 0 has {width}", field=field, row=i
            )
    try:
        array = np.array(value)  # numbers and booleans only: int64, float64 or bool, at C speed
        if array.dtype.kind in "biuf" and array.ndim == 2:
            return array.astype(np.uint8) if array.dtype.kind == "b" else array
    except ValueError:  # a nested list inside a row
        pass
    # Slow path, only for bodies holding something else: nulls (missing values) or a non-number to name.
    for i, row in enumerate(value):
        for j, v in enumerate(row):
            if v is not None and not isinstance(v, int | float):  # bool is an int
                raise InvalidInput(
                    f"'{field}' row {i}, column {j} is {v!r}, not a number", field=field, row=i, column=j
                )
    return np.array(value, dtype=np.float64)  # null -> NaN


NPY_MAGIC = b"\x93NUMPY"


def rows_from_npy(body: bytes) -> np.ndarray:
    """The array of an .npy body. Its header is read and checked against the body first: nothing is
    allocated from a size the client declares (a header may claim 10^9 rows over 80 bytes of data)."""
    if not body.startswith(NPY_MAGIC):
        raise MalformedRequest(
            "body is not an .npy array: it does not start with the .npy magic string "
            "(write it with numpy.save)"
        )
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        npy = np.lib.format
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran_order, dtype = read_header(stream)
    # numpy parses the header as a Python literal, and a hostile one fails in many ways (a dict left open
    # ends in tokenize's TokenError): each is the client's malformed body
    except (
        ValueError,
        TypeError,
        KeyError,
        OSError,
        EOFError,
        SyntaxError,
        RecursionError,
        TokenError,
    ) as exc:
        raise MalformedRequest(f"body is not a valid .npy array: {exc}") from None
    if dtype.hasobject:
        raise MalformedRequest("body is not a valid .npy array: it holds Python objects (never unpickled)")
    count = math.prod(shape)
    data_bytes = len(body) - stream.tell()
    if data_bytes != count * dtype.itemsize:
        raise MalformedRequest(
            f"body is not a valid .npy array: its header declares shape {list(shape)} of {dtype} "
            f"({count * dtype.itemsize} bytes of data), but the body holds {data_bytes}"
        )
    # A read-only view of the body, not a copy: rows become the model's tensor in data.validate, which
    # makes its own float32 copy (writable, as torch wants); a copy here cost 0.4-0.9 ms per 1,024 x 784
    # body in fresh pages, on the event loop.
    array = np.frombuffer(body, dtype=dtype, count=count, offset=stream.tell())
    array = array.reshape(shape, order="F" if fortran_order else "C")
    if array.dtype.kind not in "biuf":
        raise InvalidInput(f".npy body has dtype {array.dtype}; expected numbers")
    if array.ndim != 2:
        raise InvalidInput(f".npy body has shape {list(array.shape)}; expected (rows, dimensions)")
    if array.shape[0] == 0:
        raise InvalidInput(".npy body has no rows")
    return array


def require_content_type(request: Request, *allowed: str) -> str:
    kind = content_type(request)
    if kind not in allowed:
        raise UnsupportedMediaType(f"Content-Type {kind!r} is not accepted here; use {' or '.join(allowed)}")
    return kind


class BytesResponse(Response):
    """A Response of a body already rendered, whose raw headers are built as they are: Response.__init__
    renders the body and normalises each header through generic layers, which cost a small answer more
    than encoding it does."""

    def __init__(self, body: bytes, media_type: str, status: int = 200, headers: dict | None = None):
        self.status_code = status
        self.body = body
        self.background = None
        raw = [(b"content-length", b"%d" % len(body)), (b"content-type", media_type.encode("latin-1"))]
        if headers:
            raw += [
                (key.lower().encode("latin-1"), value.encode("latin-1")) for key, value in headers.items()
            ]
        self.raw_headers = raw


def json_response(payload: dict, status: int = 200, headers: dict | None = None) -> Response:
    return BytesResponse(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), JSON, status, headers)


def npy_response(array: np.ndarray, headers: dict | None = None) -> Response:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return BytesResponse(buffer.getvalue(), NPY, headers=headers)


MISSING_RGB = np.array([90, 90, 110], dtype=np.float64)  # the query tile's missing region: flat grey-blue


def png_grid(
    samples: np.ndarray,
    shape: list[int],
    low: float,
    high: float,
    scale: int = 2,
    observed: np.ndarray | None = None,
) -> bytes:
    """A grid of images, one per sample, with a 1-pixel gap; values mapped from [low, high] to 0..255.

    With `observed` ((D,) bool, conditional sampling) the image is in colour: the first tile is the query,
    its missing region shaded blue, and in every completion the drawn pixels are tinted blue while the
    observed pixels stay grey, so the observed and the completed parts can be told apart at a glance."""
    if len(shape) != 2:
        raise NotAcceptable(f"image/png needs a model with a 2-D input_shape; this one has {shape}")
    height, width = shape
    span = (high - low) or 1.0
    grey = np.clip((samples.reshape(-1, height, width) - low) / span, 0, 1) * 255  # (n, H, W)
    tiles = np.repeat(grey[..., None], 3, axis=3)  # (n, H, W, 3)
    if observed is not None:
        seen = observed.reshape(height, width)
        # drawn pixels run from dark blue (value low) to light blue (value high)
        dark, light = np.array([15.0, 25.0, 70.0]), np.array([150.0, 205.0, 255.0])
        tiles[:, ~seen] = dark + grey[:, ~seen][..., None] / 255.0 * (light - dark)
        query = np.where(seen[..., None], tiles[0], MISSING_RGB)
        tiles = np.concatenate([query[None], tiles])
    return _tile_png(tiles, math.ceil(math.sqrt(len(tiles))), scale, colour=observed is not None)


def heatmap_png(rows: np.ndarray, features: np.ndarray, shape: list[int], low: float, high: float) -> bytes:
    """Each row as a pair of tiles: the input in grey, then where its anomaly score comes from, each pixel's
    part of it from black (none) through red to yellow (that row's largest part: every row shows where its
    own score lies, whatever its size; the scores are in the headers and JSON). Parts below zero count as
    none."""
    if len(shape) != 2:
        raise NotAcceptable(f"image/png needs a model with a 2-D input_shape; this one has {shape}")
    height, width = shape
    grey = np.clip((rows.reshape(-1, height, width) - low) / ((high - low) or 1.0), 0, 1) * 255
    heat = np.clip(features.reshape(-1, height, width), 0, None)
    heat = heat / np.maximum(heat.max(axis=(1, 2), keepdims=True), 1e-12)  # (n, H, W) in 0..1, per row
    # black -> red over the first half, red -> yellow over the second
    coloured = (
        np.stack([np.minimum(heat * 2, 1), np.clip(heat * 2 - 1, 0, 1), np.zeros_like(heat)], axis=-1) * 255
    )
    pairs = np.stack([np.repeat(grey[..., None], 3, axis=3), coloured], axis=1).reshape(-1, height, width, 3)
    pairs_per_line = math.ceil(math.sqrt(len(rows)))
    return _tile_png(pairs, 2 * pairs_per_line, scale=2, colour=True)


def _tile_png(tiles: np.ndarray, columns: int, scale: int, colour: bool) -> bytes:
    """(n, H, W, 3) tiles on a grey grid, `columns` to a line, 1-pixel gaps, as a PNG (grey or colour)."""
    n, height, width = tiles.shape[:3]
    rows = math.ceil(n / columns)
    grid = np.full((rows * (height + 1) + 1, columns * (width + 1) + 1, 3), 128, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        top, left = 1 + r * (height + 1), 1 + c * (width + 1)
        grid[top : top + height, left : left + width] = tiles[i].astype(np.uint8)
    image = Image.fromarray(grid if colour else grid[..., 0], mode="RGB" if colour else "L")
    if scale > 1:
        image = image.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
