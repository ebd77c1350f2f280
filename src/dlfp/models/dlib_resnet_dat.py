"""Read dlib's serialized face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat) without dlib.

The file is `dlib::serialize` of a `loss_metric<fc_no_bias<128, avg_pool_everything<... ResNet ...
input_rgb_image_sized<150>>>>` network. The format, as written by dlib's serialize.h and dnn/core.h:

- integers: one control byte (low nibble = number of value bytes, 0x80 = negative) then the magnitude,
  little-endian ("compact variable-length" ints);
- floats/doubles: float_details, i.e. a (mantissa int64, exponent int16) pair of such integers, value
  mantissa * 2**exponent (exponents 32000..32002 mean +inf, -inf, nan);
- strings: length integer then the raw bytes; bools: the ASCII characters '1' / '0';
- tensors: version integer 2, the dims (num_samples, k, nr, nc) then raw little-endian float32 data;
- alias tensors: version integer 1 then the four dims (the offset into params is implied by the layer);
- the loss layer writes its version, its details and then the network; every add_layer writes its version,
  then its sub-network, then its layer details (starting with a version string such as "con_4") and its
  bookkeeping (bools and usually-empty tensors). Tag and skip layers write only a version. So the file holds
  all the nesting version numbers first, then the input layer, then every computing layer from the input
  upwards: exactly the forward order.

Nothing here knows about residual wiring (tags and skips carry no data); the network class in
`dlib_resnet.py` supplies the wiring and checks each record's kind and shape against its own plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FLOAT_IS_INF = 32000
FLOAT_IS_NINF = 32001
FLOAT_IS_NAN = 32002
TENSOR_VERSION = 2
ALIAS_TENSOR_VERSION = 1
INPUT_ADD_LAYER_VERSION = 3  # the add_layer right above the input also stores sample_expansion_factor
BOOL_BYTES = (ord("0"), ord("1"))


class DlibFormatError(ValueError):
    """The bytes are not the dlib network this reader understands."""


@dataclass
class InputLayer:
    kind: str
    mean_rgb: tuple[float, float, float]
    rows: int
    cols: int


@dataclass
class LayerRecord:
    """One computing layer: its dlib version string, integer/float settings and parameter tensors."""

    kind: str
    settings: dict[str, float | int] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class DlibNet:
    loss_kind: str
    loss_settings: dict[str, float]
    input: InputLayer
    layers: list[LayerRecord]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def error(self, message: str) -> DlibFormatError:
        return DlibFormatError(f"byte {self.pos}: {message}")

    def peek(self) -> int:
        if self.pos >= len(self.data):
            raise self.error("unexpected end of file")
        return self.data[self.pos]

    def int(self) -> int:
        control = self.peek()
        size = control & 0x0F
        if control & 0x70 or not 0 < size <= 8:
            raise self.error(f"bad integer control byte 0x{control:02x}")
        start = self.pos + 1
        if start + size > len(self.data):
            raise self.error("integer runs past end of file")
        value = int.from_bytes(self.data[start : start + size], "little")
        self.pos = start + size
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if exponent == FLOAT_IS_INF:
            return math.inf
        if exponent == FLOAT_IS_NINF:
            return -math.inf
        if exponent == FLOAT_IS_NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def string(self) -> str:
        length = self.int()
        if length < 0 or self.pos + length > len(self.data):
            raise self.error(f"bad string length {length}")
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("ascii")

    def bools(self) -> list[bool]:
        """Read a run of serialized bools (their count changed between dlib versions)."""
        values = []
        while self.pos < len(self.data) and self.data[self.pos] in BOOL_BYTES:
            values.append(self.data[self.pos] == ord("1"))
            self.pos += 1
        return values

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != TENSOR_VERSION:
            raise self.error(f"tensor version {version}, expected {TENSOR_VERSION}")
        dims = tuple(self.int() for _ in range(4))
        count = int(np.prod(dims))
        end = self.pos + 4 * count
        if count < 0 or end > len(self.data):
            raise self.error(f"tensor {dims} runs past end of file")
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).reshape(dims).copy()
        self.pos = end
        return values

    def alias_tensor(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != ALIAS_TENSOR_VERSION:
            raise self.error(f"alias_tensor version {version}, expected {ALIAS_TENSOR_VERSION}")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


def _read_con(r: _Reader, kind: str) -> LayerRecord:
    params = r.tensor().reshape(-1)
    settings = {
        "num_filters": r.int(), "nr": r.int(), "nc": r.int(), "stride_y": r.int(), "stride_x": r.int(),
        "padding_y": r.int(), "padding_x": r.int(),
    }
    filters_shape = r.alias_tensor()  # (num_filters, k, nr, nc)
    biases_shape = r.alias_tensor()  # (1, num_filters, 1, 1)
    for _ in range(4):  # learning-rate and weight-decay multipliers (weights, biases)
        r.float()
    n_weights = int(np.prod(filters_shape))
    n_bias = int(np.prod(biases_shape))
    if params.size != n_weights + n_bias:
        raise r.error(f"{kind}: params size {params.size} != filters {filters_shape} + biases {biases_shape}")
    arrays = {"weight": params[:n_weights].reshape(filters_shape)}
    if n_bias:
        arrays["bias"] = params[n_weights:].copy()
    return LayerRecord(kind, settings, arrays)


def _read_affine(r: _Reader, kind: str) -> LayerRecord:
    params = r.tensor().reshape(-1)
    gamma_shape = r.alias_tensor()
    beta_shape = r.alias_tensor()
    settings: dict[str, float | int] = {}
    if r.peek() not in BOOL_BYTES:  # newer dlib also stores the mode (CONV_MODE = 1, FC_MODE = 0)
        settings["mode"] = r.int()
    n_gamma = int(np.prod(gamma_shape))
    if params.size != n_gamma + int(np.prod(beta_shape)):
        raise r.error(f"{kind}: params size {params.size} != gamma {gamma_shape} + beta {beta_shape}")
    arrays = {"scale": params[:n_gamma].copy(), "shift": params[n_gamma:].copy()}
    return LayerRecord(kind, settings, arrays)


def _read_pool(r: _Reader, kind: str) -> LayerRecord:
    settings = {
        "nr": r.int(), "nc": r.int(), "stride_y": r.int(), "stride_x": r.int(),
        "padding_y": r.int(), "padding_x": r.int(),
    }
    return LayerRecord(kind, settings)


def _read_fc(r: _Reader, kind: str) -> LayerRecord:
    num_outputs, num_inputs = r.int(), r.int()
    params = r.tensor().reshape(-1)
    weights_shape = r.alias_tensor()  # (num_inputs, num_outputs): dlib computes output = input @ W
    biases_shape = r.alias_tensor()
    bias_mode = r.int()  # 0: has bias, 1: no bias
    for _ in range(4):
        r.float()
    n_weights = int(np.prod(weights_shape))
    if n_weights != num_inputs * num_outputs:
        raise r.error(f"{kind}: weights {weights_shape} do not match {num_inputs} -> {num_outputs}")
    arrays = {"weight": params[:n_weights].reshape(num_inputs, num_outputs).T.copy()}
    if bias_mode == 0:
        arrays["bias"] = params[n_weights : n_weights + int(np.prod(biases_shape))].copy()
    settings = {"num_inputs": num_inputs, "num_outputs": num_outputs, "bias_mode": bias_mode}
    return LayerRecord(kind, settings, arrays)


def _read_plain(r: _Reader, kind: str) -> LayerRecord:
    return LayerRecord(kind)


_LAYER_READERS = {
    "con_4": _read_con,
    "affine_": _read_affine,
    "max_pool_2": _read_pool,
    "avg_pool_2": _read_pool,
    "fc_2": _read_fc,
    "relu_": _read_plain,
    "add_prev_": _read_plain,
}

# Short, stable names for the layer kinds, independent of dlib's version suffixes.
KIND_NAMES = {
    "con_4": "con", "affine_": "affine", "max_pool_2": "max_pool", "avg_pool_2": "avg_pool", "fc_2": "fc",
    "relu_": "relu", "add_prev_": "add_prev",
}


def parse_dlib_net(data: bytes) -> DlibNet:
    """Parse the whole file; raise DlibFormatError on anything unexpected (including trailing bytes)."""
    r = _Reader(data)
    r.int()  # add_loss_layer version
    loss_kind = r.string()
    if not loss_kind.startswith("loss_metric"):
        raise r.error(f"expected a loss_metric network, found {loss_kind!r}")
    loss_settings = {"margin": r.float(), "distance_threshold": r.float()}

    versions: list[int] = []
    while True:  # nesting versions of every layer, outermost first, until the input layer's name
        versions.append(r.int())
        if versions[-1] == INPUT_ADD_LAYER_VERSION:
            break
        if len(versions) > 10_000:
            raise r.error("no input layer found")
    input_kind = r.string()
    if not input_kind.startswith("input_rgb_image"):
        raise r.error(f"expected input_rgb_image_sized, found {input_kind!r}")
    mean_rgb = (r.float(), r.float(), r.float())
    rows, cols = r.int(), r.int()
    net_input = InputLayer(input_kind, mean_rgb, rows, cols)

    layers: list[LayerRecord] = []
    n_compute = sum(1 for v in versions if v != 1)  # tag and skip layers are version 1 and hold no data
    for index in range(n_compute):
        kind = r.string()
        reader = _LAYER_READERS.get(kind)
        if reader is None:
            raise r.error(f"unsupported layer {kind!r}")
        record = reader(r, kind)
        record.kind = KIND_NAMES[kind]
        r.bools()  # this_layer_setup_called, gradient_input_is_stale, ...
        for _ in range(3):  # x_grad, cached_output, params_grad (empty in saved nets)
            r.tensor()
        if index == 0:
            r.int()  # sample_expansion_factor of the add_layer over the input
        layers.append(record)
    if r.pos != len(data):
        raise r.error(f"{len(data) - r.pos} trailing bytes after the last layer")
    return DlibNet(loss_kind, loss_settings, net_input, layers)


def read_dlib_net(path: Path | str) -> DlibNet:
    return parse_dlib_net(Path(path).read_bytes())
