"""Drop-in replacements for torch.nn.LSTM and torch.nn.LSTMCell, running on fastseq's LSTM ops.

Same constructor arguments, parameter names, initialisation, state_dict keys and call conventions as
torch's (batch_first, unbatched input, optional (h0, c0), PackedSequence in and out, proj_size, dropout
between layers, bidirectional), so a torch.nn.LSTM's state_dict loads as is and gives the same
outputs, final states and gradients.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import ops
from ..numerics import autocast_dtype
from ..ops.checks import integers
from ..ops.lstm import checked_step, kept_stacked, kept_step, stacked, threads

HiddenState = tuple[Tensor, Tensor]


class LSTM(nn.Module):
    """Multi-layer LSTM over a sequence; see torch.nn.LSTM for the full description of the arguments.

    Args:
        input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
        bidirectional=False, proj_size=0, device=None, dtype=None.

    Inputs: input (L, N, H_in), (N, L, H_in) with batch_first, (L, H_in) unbatched, or a PackedSequence;
    hx = (h_0, c_0) of shapes (D*num_layers, N, H_out) and (D*num_layers, N, H_cell), or None for zeros;
    lengths (N,) ints in [1, L] (fastseq's addition, for a padded batched input): row n holds lengths[n]
    steps, its output is zero after them and (h_n, c_n) is its state after its last step, as with a
    PackedSequence but without packing.
    Outputs: output (L, N, D*H_out) (or a PackedSequence), (h_n, c_n).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers),
                            ("proj_size", proj_size)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                             "element being zeroed")
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError("input_size and hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} "
                             f">= hidden_size={hidden_size}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and num_layers=1")
        self.mode = "LSTM"
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        num_directions = 2 if bidirectional else 1
        real_hidden = proj_size if proj_size > 0 else hidden_size
        factory = {"device": device, "dtype": dtype}

        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else real_hidden * num_directions
            for direction in range(num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = [("weight_ih", (4 * hidden_size, layer_input)), ("weight_hh", (4 * hidden_size, real_hidden))]
                if bias:
                    shapes += [("bias_ih", (4 * hidden_size,)), ("bias_hh", (4 * hidden_size,))]
                if proj_size > 0:
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                names = []
                for base, shape in shapes:
                    setattr(self, base + suffix, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(base + suffix)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """No-op, kept for torch.nn.LSTM compatibility: fastseq needs no cuDNN weight buffer."""

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        return s

    def _layer_weights(self, layer: int, direction: int):
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        w_ih, w_hh = getattr(self, "weight_ih" + suffix), getattr(self, "weight_hh" + suffix)
        bias = getattr(self, "bias_ih" + suffix) + getattr(self, "bias_hh" + suffix) if self.bias else None
        w_hr = getattr(self, "weight_hr" + suffix) if self.proj_size > 0 else None
        return w_ih, w_hh, bias, w_hr

    def _check_input(self, x: Tensor, hx: Optional[HiddenState], batch: int) -> None:
        if x.size(-1) != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {x.size(-1)}")
        weight = self.weight_ih_l0
        autocast = autocast_dtype(x.device) is not None  # the op casts inputs and weights to the autocast dtype
        if x.dtype != weight.dtype and not autocast:
            raise TypeError(f"input must have the dtype of the parameters ({weight.dtype}), got {x.dtype}")
        if x.device != weight.device:
            raise RuntimeError(f"input must be on the device of the parameters ({weight.device}), got {x.device}")
        if hx is None:
            return
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("hx must be a tuple (h_0, c_0) of tensors")
        d = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        for name, t, size in (("hx[0] (h_0)", hx[0], real_hidden), ("hx[1] (c_0)", hx[1], self.hidden_size)):
            expected = (d * self.num_layers, batch, size)
            if tuple(t.shape) != expected:
                raise RuntimeError(f"Expected {name} size {expected}, got {tuple(t.shape)}")
            if t.dtype != x.dtype and not autocast:
                raise TypeError(f"{name} must have the dtype of input ({x.dtype}), got {t.dtype}")
            if t.device != x.device:
                raise RuntimeError(f"{name} must be on the device of input ({x.device}), got {t.device}")

    def forward(
        self, input: Union[Tensor, PackedSequence], hx: Optional[HiddenState] = None,
        lengths: Union[Tensor, Sequence[int], None] = None,
    ) -> tuple[Union[Tensor, PackedSequence], HiddenState]:
        bucket = self._bucket(input, lengths)
        if bucket is None:  # not an input it runs: its own error
            return self._forward(input, hx, lengths)
        x = input.data if isinstance(input, PackedSequence) else input
        return threads.run(self._serve, (input, hx, lengths), x, self.parameters, *bucket)

    def _serve(self, input, hx, lengths):
        """A call like one that went the checked route before takes the kept one (_kept_route), else the
        checked route (_forward)."""
        if lengths is None and type(input) is Tensor:
            out = self._kept_route(input, hx)
            if out is not None:
                return out
        return self._forward(input, hx, lengths)

    def _kept_route(self, input: Tensor, hx) -> Optional[tuple[Tensor, HiddenState]]:
        """A batched, padded call like one that went the checked route before, where the kept backend runs the
        whole LSTM (torch's kernel, which checks the arguments): straight there, without this module's checks
        and choosing, which cost a small call a tenth of its time. None otherwise, or where the call raises:
        the checked route then answers, with its own error."""
        if input.dim() != 3 or autocast_dtype(input.device) is not None:
            return None
        x = input.transpose(0, 1) if self.batch_first else input
        weights = _weights(self, self._flat_weights_names)
        if hx is None:
            layers = (2 if self.bidirectional else 1) * self.num_layers
            h0 = x.new_zeros(layers, x.shape[1], self.proj_size if self.proj_size > 0 else self.hidden_size)
            c0 = x.new_zeros(layers, x.shape[1], self.hidden_size)
        elif isinstance(hx, (tuple, list)) and len(hx) == 2 and all(isinstance(t, Tensor) for t in hx):
            h0, c0 = hx
        else:
            return None
        first = (weights[0], weights[1], weights[2] if self.bias else None,
                 weights[len(self._all_weights[0]) - 1] if self.proj_size > 0 else None)
        grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in weights))
        try:
            whole = kept_stacked(x, (h0, c0), weights, first, self.bias, self.num_layers, self.dropout,
                                 self.training, self.bidirectional, grad)
        except (RuntimeError, TypeError, ValueError):
            return None
        if whole is None:
            return None
        y, h_n, c_n = whole
        return (y.transpose(0, 1) if self.batch_first else y), (h_n, c_n)

    def _bucket(self, input, lengths) -> Optional[tuple[tuple, tuple]]:
        """The call's sizes and flags, for the thread choice (ops.lstm.threads)."""
        if isinstance(input, PackedSequence):
            steps, kind = input.batch_sizes.numel(), "packed"
            batch = int(input.batch_sizes[0]) if steps else 0
        elif isinstance(input, Tensor) and input.dim() in (2, 3):
            steps, batch = (input.shape[0], 1) if input.dim() == 2 else input.shape[:2]
            steps, batch = (batch, steps) if self.batch_first and input.dim() == 3 else (steps, batch)
            kind = "padded" if lengths is None else "lengths"
        else:
            return None
        sizes = (steps, batch, self.input_size, self.hidden_size, self.proj_size, self.num_layers)
        return sizes, (self.bidirectional, kind)

    def _forward(self, input: Union[Tensor, PackedSequence], hx: Optional[HiddenState],
                 lengths: Union[Tensor, Sequence[int], None]) -> tuple[Union[Tensor, PackedSequence], HiddenState]:
        packed = isinstance(input, PackedSequence)
        unbatched = False
        if lengths is not None:
            return self._forward_lengths(input, hx, lengths)
        if packed:
            sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
            if hx is not None and sorted_indices is not None:
                hx = (hx[0].index_select(1, sorted_indices), hx[1].index_select(1, sorted_indices))
            whole = self._packed(input.data, input.batch_sizes, hx)
            if whole is not None:  # torch's one call over the packed data, as torch.nn.LSTM makes it
                data, h_n, c_n = whole
                if unsorted_indices is not None:
                    h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
                return PackedSequence(data, input.batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)
            x, lengths = pad_packed_sequence(PackedSequence(input.data, input.batch_sizes, None, None))
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"input must be a Tensor or a PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
            if hx is not None:
                want = 2 if unbatched else 3
                if isinstance(hx, (tuple, list)) and len(hx) == 2 and (hx[0].dim(), hx[1].dim()) != (want, want):
                    kind = "unbatched 2-D" if unbatched else "batched 3-D"
                    raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                                       f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
                if unbatched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        output, h_n, c_n = self._run(x, hx, lengths)
        if packed:
            data = pack_padded_sequence(output, lengths).data
            output = PackedSequence(data, input.batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
        elif unbatched:
            output, h_n, c_n = output.squeeze(1), h_n.squeeze(1), c_n.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_n, c_n)

    def _run(self, x: Tensor, hx: Optional[HiddenState], lengths: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Every layer and direction over x (L, N, H_in), time major; lengths sorted non-increasing or None."""
        batch = x.size(1)
        self._check_input(x, hx, batch)

        d = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        if hx is None:
            h0 = x.new_zeros(d * self.num_layers, batch, real_hidden)
            c0 = x.new_zeros(d * self.num_layers, batch, self.hidden_size)
        else:
            h0, c0 = hx
        if autocast_dtype(x.device) is None:
            if lengths is None:
                whole = self._stacked(x, (h0, c0), x.requires_grad)
            else:
                packed = pack_padded_sequence(x, lengths)
                whole = self._stacked(packed.data, (h0, c0), x.requires_grad, lengths, packed.batch_sizes, x)
                if whole is not None:
                    y = pad_packed_sequence(PackedSequence(whole[0], packed.batch_sizes), total_length=x.shape[0])[0]
                    whole = (y, *whole[1:])
            if whole is not None:
                return whole

        h_n, c_n = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(d):
                k = layer * d + direction
                y, h, c = ops.lstm_layer(layer_input, h0[k], c0[k], *self._layer_weights(layer, direction),
                                         lengths=lengths, reverse=direction == 1)
                outputs.append(y)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if d == 1 else torch.cat(outputs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, p=self.dropout, training=True)
        return layer_input, torch.stack(h_n), torch.stack(c_n)

    def _stacked(self, x: Tensor, hx: HiddenState, x_grad: bool, lengths: Optional[Tensor] = None,
                 batch_sizes: Optional[Tensor] = None, shape: Optional[Tensor] = None):
        """Every layer in one call where the backend chosen for the first layer offers it (ops.lstm.stacked),
        on the parameters themselves -> (y, h_n, c_n), or None. x: time major, or a packed sequence's data
        with its batch_sizes (shape: a tensor of the padded input's shape; lengths sorted non-increasing)."""
        names = self._all_weights[0]
        weights = _weights(self, self._flat_weights_names)
        first = (weights[0], weights[1], weights[2] if self.bias else None,
                 weights[len(names) - 1] if self.proj_size > 0 else None)
        grad = torch.is_grad_enabled() and (x_grad or any(p.requires_grad for p in weights))
        return stacked(x, hx, weights, first, self.bias, self.num_layers, self.dropout, self.training,
                       self.bidirectional, grad, lengths, batch_sizes, shape)

    def _packed(self, data: Tensor, batch_sizes: Tensor, hx: Optional[HiddenState]):
        """A packed sequence's (data (sum of lengths, H_in), batch_sizes) in one call when the backend chosen
        for its first layer offers it -> (data, h_n, c_n); else None."""
        if data.dim() != 2 or batch_sizes.numel() == 0 or autocast_dtype(data.device) is not None:
            return None
        steps, batch = batch_sizes.numel(), int(batch_sizes[0])
        self._check_input(data, hx, batch)
        d = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        h0, c0 = hx if hx is not None else (data.new_zeros(d * self.num_layers, batch, real_hidden),
                                            data.new_zeros(d * self.num_layers, batch, self.hidden_size))
        lengths = None  # every row runs the whole sequence: its last step holds them all
        if int(batch_sizes[-1]) != batch:
            lengths = (batch_sizes[None, :] > torch.arange(batch)[:, None]).sum(1)  # sorted non-increasing
        shape = data.new_zeros(()).expand(steps, batch, data.shape[1])  # the padded input's shape, no copy
        return self._stacked(data, (h0, c0), data.requires_grad, lengths, batch_sizes, shape)

    def _forward_lengths(self, input: Tensor, hx: Optional[HiddenState], lengths) -> tuple[Tensor, HiddenState]:
        """A padded batch with per-row lengths: sort the rows by length (as packing does), run, unsort."""
        if not isinstance(input, Tensor) or input.dim() != 3:
            raise ValueError("LSTM: lengths needs a batched, padded input tensor (3-D); got "
                             + (f"{input.dim()}-D" if isinstance(input, Tensor) else type(input).__name__))
        lengths = integers("LSTM", "lengths", lengths).to(device="cpu", dtype=torch.int64)
        x = input.transpose(0, 1) if self.batch_first else input
        steps, batch = x.shape[0], x.shape[1]
        if lengths.shape != (batch,) or (batch and (int(lengths.min()) < 1 or int(lengths.max()) > steps)):
            raise ValueError(f"LSTM: lengths must hold one int in [1, L={steps}] per sequence (N={batch}), got "
                             f"{lengths.tolist() if lengths.dim() == 1 else tuple(lengths.shape)}")
        sorted_lengths, order = torch.sort(lengths, descending=True, stable=True)
        if bool((order == torch.arange(batch)).all()):
            output, h_n, c_n = self._run(x, hx, sorted_lengths)
        else:
            unorder = torch.empty_like(order)
            unorder[order] = torch.arange(batch)
            order, unorder = order.to(x.device, non_blocking=True), unorder.to(x.device, non_blocking=True)
            if hx is not None:
                hx = (hx[0].index_select(1, order), hx[1].index_select(1, order))
            output, h_n, c_n = self._run(x.index_select(1, order), hx, sorted_lengths)
            output, h_n, c_n = (t.index_select(1, unorder) for t in (output, h_n, c_n))
        return (output.transpose(0, 1) if self.batch_first else output), (h_n, c_n)


_CELL_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _weights(module: nn.Module, names: Sequence[str]) -> list[Optional[Tensor]]:
    """The module's named weights: from its parameter dict itself (getattr costs a microsecond each), through
    getattr where a parametrization (weight drop) computes one."""
    params = module._parameters
    return [params[name] if name in params else getattr(module, name) for name in names]


class LSTMCell(nn.LSTMCell):
    """One LSTM step; see torch.nn.LSTMCell. Runs `fastseq.ops.lstm_step`: the projections, then the gate
    nonlinearities and the cell update as one fused op, or torch's own cell where it is the faster.
    A torch.nn.LSTMCell (its subclass, with its attributes and parameters), so code that checks the type
    keeps working.

    Inputs: input (N, H_in) or (H_in,); hx = (h_0, c_0) each (N, H) or (H,), or None for zeros.
    Output: (h_1, c_1).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        nn.Module.__init__(self)  # torch's __init__ would build the same parameters once more
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    def forward(self, input: Tensor, hx: Optional[HiddenState] = None) -> HiddenState:
        fast = self._kept_route(input, hx)
        if fast is not None:
            return fast
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if input.size(-1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(-1)} expected {self.input_size}")
        w_ih, w_hh, b_ih, b_hh = _weights(self, _CELL_WEIGHTS)
        device = input.device
        autocast = autocast_dtype(device) is not None  # the op casts inputs and weights to its dtype
        if input.dtype != w_ih.dtype and not autocast:
            raise TypeError(f"input must have the dtype of the parameters ({w_ih.dtype}), got {input.dtype}")
        if device != w_ih.device:
            raise RuntimeError(f"input must be on the device of the parameters ({w_ih.device}), got {device}")
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        if hx is None:
            h = c = x.new_zeros(x.size(0), self.hidden_size)
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(t, Tensor) for t in hx):
                raise TypeError(f"LSTMCell: hx must be a tuple (h_0, c_0) of two tensors, got "
                                f"{type(hx).__name__}" + (f" of {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
            h, c = hx
            if unbatched:
                h, c = h.unsqueeze(0), c.unsqueeze(0)
            for name, t in (("hx[0] (h_0)", h), ("hx[1] (c_0)", c)):
                if tuple(t.shape) != (x.size(0), self.hidden_size):
                    raise RuntimeError(f"Expected {name} size {(x.size(0), self.hidden_size)}, got "
                                       f"{tuple(t.shape)}" + (" (unbatched input)" if unbatched else ""))
                if t.dtype != x.dtype and not autocast:
                    raise TypeError(f"{name} must have the dtype of input ({x.dtype}), got {t.dtype}")
                if t.device != device:
                    raise RuntimeError(f"{name} must be on the device of input ({device}), got {t.device}")
        step = ops.lstm_step if autocast else checked_step  # checked above, as torch.nn.LSTMCell checks
        h, c = step(x, h, c, w_ih, w_hh, b_ih, b_hh)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)

    def _kept_route(self, input, hx) -> Optional[HiddenState]:
        """A batched step like one that went the checked route before, where its kept backend runs torch's
        whole cell (whose kernel checks the arguments): straight there, without this module's checks and
        choosing, which cost a small step as much as its work. None otherwise, or where the call raises: the
        checked route then answers, with its own error."""
        if type(input) is not Tensor or input.dim() != 2 or autocast_dtype(input.device) is not None:
            return None
        if hx is not None and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            return None
        w_ih, w_hh, b_ih, b_hh = _weights(self, _CELL_WEIGHTS)
        if hx is None:
            h = c = input.new_zeros(input.size(0), self.hidden_size)
        else:
            h, c = hx
        if not isinstance(h, Tensor) or not isinstance(c, Tensor):
            return None
        grad = torch.is_grad_enabled() and (input.requires_grad or h.requires_grad or c.requires_grad
                                            or w_ih.requires_grad or w_hh.requires_grad
                                            or (b_ih is not None and (b_ih.requires_grad or b_hh.requires_grad)))
        try:
            return kept_step(input, h, c, w_ih, w_hh, b_ih, b_hh, grad)
        except (RuntimeError, TypeError, ValueError):
            return None
