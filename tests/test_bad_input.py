"""Bad input: a clear Python exception naming the tensor and what was expected,
the same on every path a call can take: the direct bindings the modules use,
torch.ops (what __torch_function__ overrides and torch.compile see), the fake
implementations under FakeTensorMode, and meta tensors (shape inference).
A meta tensor among real ones is a device mismatch, never uninitialised memory."""
import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

import lstm_ext
from conftest import RecordsTorchFunctions

F64 = torch.float64
ALL_PATHS = ("direct", "torch.ops", "fake", "meta")
MIXED = ("direct", "torch.ops", "fake")  # a meta tensor among CPU ones: all-meta would be consistent


def randn(*shape, device="cpu", dtype=F64):
    return torch.randn(*shape, device=device, dtype=dtype)


def cell_case(change):
    """LSTMCell(4, 5) called on (x (3, 4), (h, c) (3, 5)), with change(device, x, h, c) -> (x, h, c)."""
    def build(device):
        cell = lstm_ext.LSTMCell(4, 5, dtype=F64, device=device)
        x, h, c = change(device, randn(3, 4, device=device), randn(3, 5, device=device), randn(3, 5, device=device))
        return (lambda x, h, c: cell(x, (h, c))), (x, h, c)
    return build


def lstm_case(change, hidden_size=3, proj_size=0, **config):
    """LSTM(4, 3, num_layers=2) on x (5, 2, 4) with (h_0, c_0) (2, 2, 3); change(device, rnn, x, h, c).
    With proj_size, h_0 is (2, 2, proj_size)."""
    def build(device):
        rnn = lstm_ext.LSTM(4, hidden_size, num_layers=2, proj_size=proj_size, dtype=F64, device=device, **config)
        x, h, c = change(device, rnn, randn(5, 2, 4, device=device),
                         randn(2, 2, proj_size or hidden_size, device=device),
                         randn(2, 2, hidden_size, device=device))
        return (lambda x, h, c: rnn(x, (h, c))), (x, h, c)
    return build


def layer_case(change):
    """lstm_layer on x (3, 2, 3), (h_0, c_0) (2, 4), weights for H=4; change(device, args) -> args."""
    def build(device):
        args = [randn(3, 2, 3, device=device), randn(2, 4, device=device), randn(2, 4, device=device),
                randn(16, 3, device=device), randn(16, 4, device=device), randn(16, device=device),
                randn(16, device=device)]
        args = change(device, args)
        return (lambda x, h, c, *w: lstm_ext.lstm_layer(x, (h, c), *w)), tuple(args)
    return build


def layer_backward_case(change):
    """torch.ops.lstm_ext.layer_backward with its saved tensors; change(device, args) -> args."""
    def build(device):
        x, h0, c0, w_ih, w_hh = (randn(3, 2, 3), randn(2, 4), randn(2, 4), randn(16, 3), randn(16, 4))
        out, h_n, c_n, gates, cells = torch.ops.lstm_ext.layer_forward(x, h0, c0, w_ih, w_hh, None, None, False)
        args = [torch.randn_like(out), torch.randn_like(h_n), torch.randn_like(c_n), x, h0, c0, w_ih, w_hh, out,
                gates, cells]
        args = change(device, [a.to(device) for a in args])
        return (lambda *a: torch.ops.lstm_ext.layer_backward(*a, False, [True] * 4)), tuple(args)
    return build


def cell_backward_case(change):
    """torch.ops.lstm_ext.cell_backward with its saved tensors; change(device, args) -> args."""
    def build(device):
        x, h, c, weight = randn(3, 4), randn(3, 5), randn(3, 5), randn(20, 9)
        h_new, c_new, gates, xh = torch.ops.lstm_ext.cell_forward(x, h, c, weight, None)
        args = [torch.randn_like(h_new), torch.randn_like(c_new), c, c_new, gates, xh, weight]
        args = change(device, [a.to(device) for a in args])
        return torch.ops.lstm_ext.cell_backward, tuple(args)
    return build


def replaced(index, make):
    """A change that replaces argument `index` with make(device, old)."""
    def change(device, args):
        args = list(args)
        args[index] = make(device, args[index])
        return args
    return change


def on_meta(t):
    return t.to("meta")


def set_param(name, make):
    def change(device, rnn, x, h, c):
        setattr(rnn, name, nn.Parameter(make(device, getattr(rnn, name))))
        return x, h, c
    return change


CASES = {
    # --- LSTMCell --------------------------------------------------------------
    "cell: unbatched input, batched states": (
        cell_case(lambda d, x, h, c: (x[0], h, c)), ValueError,
        r"an unbatched input of shape \(input_size,\) takes states of shape \(hidden_size,\), got h_prev as a "
        r"tensor of shape \(3, 5\)", ALL_PATHS),
    "lstm_cell: input 1-D": (
        lambda d: ((lambda x, h, c, w: lstm_ext.lstm_cell(x, (h, c), w)),
                   (randn(4, device=d), randn(3, 5, device=d), randn(3, 5, device=d), randn(20, 9, device=d))),
        ValueError, r"lstm_ext.lstm_cell: input must be 2-D \(batch, input_size\), got a 1-D tensor", ALL_PATHS),
    "cell: input 3-D": (cell_case(lambda d, x, h, c: (x[None], h, c)), ValueError, r"input must be 2-D", ALL_PATHS),
    "cell: wrong feature size": (cell_case(lambda d, x, h, c: (randn(3, 5, device=d), h, c)), ValueError,
                                 r"input has 5 features but the cell's input_size is 4", ALL_PATHS),
    "cell: batch mismatch h": (cell_case(lambda d, x, h, c: (x, randn(4, 5, device=d), c)), ValueError,
                               r"hx \(h_prev\) must have shape \[3, 5\] \(batch, hidden_size\), got \[4, 5\]",
                               ALL_PATHS),
    "cell: batch mismatch c": (cell_case(lambda d, x, h, c: (x, h, c[:1])), ValueError,
                               r"cx \(c_prev\) must have shape \[3, 5\].*got \[1, 5\]", ALL_PATHS),
    "cell: c 1-D": (cell_case(lambda d, x, h, c: (x, h, c[0])), ValueError, r"cx \(c_prev\) must have shape",
                    ALL_PATHS),
    "cell: dtype mismatch input": (cell_case(lambda d, x, h, c: (x.float(), h, c)), TypeError,
                                   r"dtype mismatch: input is torch.float32 but weight is torch.float64", ALL_PATHS),
    "cell: dtype mismatch state": (cell_case(lambda d, x, h, c: (x, h, c.float())), TypeError,
                                   r"dtype mismatch: cx \(c_prev\) is torch.float32", ALL_PATHS),
    "cell: integer input": (cell_case(lambda d, x, h, c: (x.long(), h, c)), TypeError,
                            r"input must be a dense floating point tensor .* got torch.int64", ALL_PATHS),
    "cell: state on meta": (cell_case(lambda d, x, h, c: (x, h, on_meta(c))), ValueError,
                            r"lstm_ext.lstm_cell: device mismatch: cx \(c_prev\) is on meta but weight is on cpu",
                            MIXED),
    "cell: input on meta": (cell_case(lambda d, x, h, c: (on_meta(x), h, c)), ValueError,
                            r"device mismatch: input is on meta but weight is on cpu", MIXED),
    "cell: bad weight shape": (
        lambda d: ((lambda x, h, c, w: lstm_ext.lstm_cell(x, (h, c), w)),
                   (randn(2, 3, device=d), randn(2, 4, device=d), randn(2, 4, device=d), randn(15, 7, device=d))),
        ValueError, r"weight must have shape \[4\*hidden_size, input_size \+ hidden_size\], got \[15, 7\]", ALL_PATHS),
    "cell: bad bias shape": (
        lambda d: ((lambda x, h, c, w, b: lstm_ext.lstm_cell(x, (h, c), w, b)),
                   (randn(2, 3, device=d), randn(2, 4, device=d), randn(2, 4, device=d), randn(16, 7, device=d),
                    randn(4, device=d))),
        ValueError, r"bias must have shape \[16\] \(4\*hidden_size,\), got \[4\]", ALL_PATHS),
    "cell: integer weight": (
        lambda d: ((lambda x, h, c, w: lstm_ext.lstm_cell(x, (h, c), w)),
                   tuple(torch.ones(*s, device=d).long() for s in ((2, 3), (2, 1), (2, 1), (4, 4)))),
        TypeError, r"weight must be a dense floating point tensor .* got torch.int64", ALL_PATHS),
    # --- LSTM ------------------------------------------------------------------
    "lstm: input 1-D": (lstm_case(lambda d, r, x, h, c: (x[:, 0, 0], h, c)), ValueError,
                        r"expected input of shape .* got a tensor of shape \(5,\) of 1 dims", ALL_PATHS),
    "lstm: wrong features": (lstm_case(lambda d, r, x, h, c: (randn(5, 2, 6, device=d), h, c)), ValueError,
                             r"input.size\(-1\) must be equal to input_size. Expected 4, got 6", ALL_PATHS),
    "lstm: h_0 shape": (lstm_case(lambda d, r, x, h, c: (x, h[:1], c)), ValueError,
                        r"expected h_0 of shape \(2, 2, 3\), got a tensor of shape \(1, 2, 3\)", ALL_PATHS),
    "lstm: c_0 shape": (lstm_case(lambda d, r, x, h, c: (x, h, randn(2, 3, 3, device=d))), ValueError,
                        r"expected c_0 of shape \(2, 2, 3\), got a tensor of shape \(2, 3, 3\)", ALL_PATHS),
    "lstm: dtype of input": (lstm_case(lambda d, r, x, h, c: (x.float(), h.float(), c.float())), TypeError,
                             r"dtype mismatch: weight_ih_l0 is torch.float64 but input is torch.float32", ALL_PATHS),
    "lstm: dtype of h_0": (lstm_case(lambda d, r, x, h, c: (x, h.float(), c)), TypeError,
                           r"dtype mismatch: h_0 is torch.float32 but input is torch.float64", ALL_PATHS),
    "lstm: integer input": (lstm_case(lambda d, r, x, h, c: (x.long(), h, c)), TypeError,
                            r"lstm_ext.LSTM: input must be a dense floating point tensor .* got torch.int64",
                            ALL_PATHS),
    "lstm: no time steps": (lstm_case(lambda d, r, x, h, c: (x[:0], h, c)), ValueError,
                            r"expected sequence length to be larger than 0, got input of shape \(0, 2, 4\)",
                            ALL_PATHS),
    "lstm: wrong weight_ih_l1": (lstm_case(set_param("weight_ih_l1", lambda d, w: randn(12, 4, device=d))),
                                 ValueError, r"weight_ih_l1 must have shape \(12, 3\) \(4\*hidden_size, "
                                 r"hidden_size\), got \(12, 4\)", ALL_PATHS),
    "lstm: wrong bias_hh_l1_reverse": (
        lstm_case(set_param("bias_hh_l1_reverse", lambda d, w: randn(11, device=d)), bidirectional=True),
        ValueError, r"bias_hh_l1_reverse must have shape \(12,\) \(4\*hidden_size,\), got \(11,\)", ALL_PATHS),
    "lstm: c_0 on meta": (lstm_case(lambda d, r, x, h, c: (x, h, on_meta(c))), ValueError,
                          r"lstm_ext.LSTM: device mismatch: c_0 is on meta but input is on cpu", MIXED),
    "lstm: input on meta": (lstm_case(lambda d, r, x, h, c: (on_meta(x), on_meta(h), on_meta(c))), ValueError,
                            r"device mismatch: weight_ih_l0 is on cpu but input is on meta", MIXED),
    "lstm: a parameter on meta": (lstm_case(set_param("weight_hh_l1", lambda d, w: on_meta(w))), ValueError,
                                  r"device mismatch: weight_hh_l1 is on meta but input is on cpu", MIXED),
    "lstm: hx a tensor": (lambda d: ((lambda x, h: lstm_ext.LSTM(4, 3, dtype=F64, device=d)(x, h)),
                                     (randn(5, 2, 4, device=d), randn(1, 2, 3, device=d))),
                          TypeError, r"hx must be a pair \(h_0, c_0\), got a tensor of shape \(1, 2, 3\)", ALL_PATHS),
    # --- lstm_layer and the layer operators ----------------------------------
    "layer: hx a tensor": (lambda d: ((lambda x, h, w_ih, w_hh: lstm_ext.lstm_layer(x, h, w_ih, w_hh)),
                                      (randn(3, 2, 3, device=d), randn(2, 4, device=d), randn(16, 3, device=d),
                                       randn(16, 4, device=d))),
                           TypeError, r"lstm_ext.lstm_layer: hx must be a pair \(h_0, c_0\), got a tensor", ALL_PATHS),
    "layer: c_0 on meta": (layer_case(replaced(2, lambda d, t: on_meta(t))), ValueError,
                           r"device mismatch: c_0 is on meta but weight is on cpu", MIXED),
    "layer: wrong weight_hh": (layer_case(replaced(4, lambda d, t: t[:, :-1])), ValueError,
                               r"weight_hh must have shape \[4\*hidden_size, hidden_size\], got \[16, 3\]", ALL_PATHS),
    "layer: wrong features": (layer_case(replaced(0, lambda d, t: t[..., :2])), ValueError,
                              r"input has 2 features but input_size is 3", ALL_PATHS),
    "layer: wrong bias_hh": (layer_case(replaced(6, lambda d, t: t[:3])), ValueError,
                             r"bias_hh must have shape \[16\] \(4\*hidden_size,\), got \[3\]", ALL_PATHS),
    "layer: dtype of h_0": (layer_case(replaced(1, lambda d, t: t.float())), TypeError,
                            r"dtype mismatch: h_0 is torch.float32 but weight is torch.float64", ALL_PATHS),
    "layer_inference: wrong features": (
        lambda d: (torch.ops.lstm_ext.layer_inference,
                   (randn(3, 2, 2, device=d), randn(2, 4, device=d), randn(2, 4, device=d), randn(16, 3, device=d),
                    randn(16, 4, device=d), None, None, False)),
        ValueError, r"input has 2 features but input_size is 3", ALL_PATHS),
    "layer_inference: c_0 on meta": (
        lambda d: (torch.ops.lstm_ext.layer_inference,
                   (randn(3, 2, 3, device=d), randn(2, 4, device=d), on_meta(randn(2, 4, device=d)),
                    randn(16, 3, device=d), randn(16, 4, device=d), None, None, False)),
        ValueError, r"device mismatch: c_0 is on meta but weight is on cpu", MIXED),
    "layer_backward: cells shape": (layer_backward_case(replaced(10, lambda d, t: t[:1])), ValueError,
                                    r"cells must have shape \[3, 2, 4\] \(seq_len, batch, hidden_size\)", ALL_PATHS),
    "layer_backward: gates shape": (layer_backward_case(replaced(9, lambda d, t: t[..., :-1])), ValueError,
                                    r"gates must have shape \[3, 2, 16\]", ALL_PATHS),
    "layer_backward: grad_h_n shape": (layer_backward_case(replaced(1, lambda d, t: t[:1])), ValueError,
                                       r"grad_h_n must have shape \[2, 4\] \(batch, hidden_size\), got \[1, 4\]",
                                       ALL_PATHS),
    "layer_backward: grad_output dtype": (layer_backward_case(replaced(0, lambda d, t: t.float())), TypeError,
                                          r"dtype mismatch: grad_output is torch.float32 but weight is", ALL_PATHS),
    "layer_backward: output on meta": (layer_backward_case(replaced(8, lambda d, t: on_meta(t))), ValueError,
                                       r"device mismatch: output is on meta but weight is on cpu", MIXED),
    "cell_backward: gates shape": (cell_backward_case(replaced(4, lambda d, t: t[:, :-1])), ValueError,
                                   r"gates must have shape \[3, 20\] \(batch, 4\*hidden_size\)", ALL_PATHS),
    "cell_backward: grad_h shape": (cell_backward_case(replaced(0, lambda d, t: t[:2])), ValueError,
                                    r"grad_h must have shape \[3, 5\]", ALL_PATHS),
    "cell_backward: input_hidden dtype": (cell_backward_case(replaced(5, lambda d, t: t.float())), TypeError,
                                          r"dtype mismatch: input_hidden is torch.float32", ALL_PATHS),
}


def gru_case(change, **config):
    """GRU(4, 3, num_layers=2) on x (5, 2, 4) with h_0 (2, 2, 3); change(device, rnn, x, h) -> (x, h)."""
    def build(device):
        rnn = lstm_ext.GRU(4, 3, num_layers=2, dtype=F64, device=device, **config)
        x, h = change(device, rnn, randn(5, 2, 4, device=device), randn(2, 2, 3, device=device))
        return rnn, (x, h)
    return build


def gru_layer_case(change):
    """gru_layer on x (3, 2, 3), h_0 (2, 4), weights for H=4; change(device, args) -> args."""
    def build(device):
        args = [randn(3, 2, 3, device=device), randn(2, 4, device=device), randn(12, 3, device=device),
                randn(12, 4, device=device), randn(12, device=device), randn(12, device=device)]
        return lstm_ext.gru_layer, tuple(change(device, args))
    return build


def gru_cell_case(change):
    """GRUCell(4, 5) on x (3, 4), h (3, 5); change(device, x, h) -> (x, h)."""
    def build(device):
        cell = lstm_ext.GRUCell(4, 5, dtype=F64, device=device)
        return cell, change(device, randn(3, 4, device=device), randn(3, 5, device=device))
    return build


def gru_backward_case(change):
    """torch.ops.lstm_ext.gru_layer_backward with its saved tensors; change(device, args) -> args."""
    def build(device):
        x, h0, w_ih, w_hh = randn(3, 2, 3), randn(2, 4), randn(12, 3), randn(12, 4)
        out, h_n, gates, hidden_n = torch.ops.lstm_ext.gru_layer_forward(x, h0, w_ih, w_hh, None, None, False)
        args = [torch.randn_like(out), torch.randn_like(h_n), x, h0, w_ih, w_hh, out, gates, hidden_n]
        args = change(device, [a.to(device) for a in args])
        return (lambda *a: torch.ops.lstm_ext.gru_layer_backward(*a, False, [True] * 3)), tuple(args)
    return build


def set_gru_param(name, make):
    def change(device, rnn, x, h):
        setattr(rnn, name, nn.Parameter(make(device, getattr(rnn, name))))
        return x, h
    return change


CASES.update({
    # --- GRU -------------------------------------------------------------------
    "gru: input 1-D": (gru_case(lambda d, r, x, h: (x[:, 0, 0], h)), ValueError,
                       r"lstm_ext.GRU: expected input of shape .* got a tensor of shape \(5,\) of 1 dims", ALL_PATHS),
    "gru: wrong features": (gru_case(lambda d, r, x, h: (randn(5, 2, 6, device=d), h)), ValueError,
                            r"input.size\(-1\) must be equal to input_size. Expected 4, got 6", ALL_PATHS),
    "gru: h_0 shape": (gru_case(lambda d, r, x, h: (x, h[:1])), ValueError,
                       r"lstm_ext.GRU: expected h_0 of shape \(2, 2, 3\), got a tensor of shape \(1, 2, 3\)",
                       ALL_PATHS),
    "gru: dtype of h_0": (gru_case(lambda d, r, x, h: (x, h.float())), TypeError,
                          r"dtype mismatch: h_0 is torch.float32 but input is torch.float64", ALL_PATHS),
    "gru: no time steps": (gru_case(lambda d, r, x, h: (x[:0], h)), ValueError,
                           r"expected sequence length to be larger than 0", ALL_PATHS),
    "gru: wrong weight_hh_l1": (gru_case(set_gru_param("weight_hh_l1", lambda d, w: randn(12, 3, device=d))),
                                ValueError, r"weight_hh_l1 must have shape \(9, 3\) \(3\*hidden_size, "
                                r"hidden_size\), got \(12, 3\)", ALL_PATHS),
    "gru: wrong bias_ih_l0_reverse": (
        gru_case(set_gru_param("bias_ih_l0_reverse", lambda d, w: randn(8, device=d)), bidirectional=True),
        ValueError, r"bias_ih_l0_reverse must have shape \(9,\) \(3\*hidden_size,\), got \(8,\)", ALL_PATHS),
    "gru: h_0 on meta": (gru_case(lambda d, r, x, h: (x, on_meta(h))), ValueError,
                         r"lstm_ext.GRU: device mismatch: h_0 is on meta but input is on cpu", MIXED),
    "gru: hx a pair": (gru_case(lambda d, r, x, h: (x, (h, h))), TypeError,
                       r"lstm_ext.GRU: hx must be a Tensor h_0 .* got a tuple of length 2", ALL_PATHS),
    "gru_layer: wrong weight_hh": (gru_layer_case(replaced(3, lambda d, t: t[:, :-1])), ValueError,
                                   r"lstm_ext.GRU: weight_hh must have shape \[3\*hidden_size, hidden_size\], got "
                                   r"\[12, 3\]", ALL_PATHS),
    "gru_layer: LSTM-sized weight_ih": (gru_layer_case(replaced(2, lambda d, t: randn(16, 3, device=d))), ValueError,
                                        r"weight_ih must have shape \[3\*hidden_size, input_size\] = \[12, "
                                        r"input_size\], got \[16, 3\]", ALL_PATHS),
    "gru_layer: h_0 of another batch": (gru_layer_case(replaced(1, lambda d, t: randn(3, 4, device=d))), ValueError,
                                        r"h_0 must have shape \[2, 4\] \(batch, hidden_size\), got \[3, 4\]",
                                        ALL_PATHS),
    "gru_layer: wrong bias_hh": (gru_layer_case(replaced(5, lambda d, t: t[:4])), ValueError,
                                 r"bias_hh must have shape \[12\] \(3\*hidden_size,\), got \[4\]", ALL_PATHS),
    "gru_layer: weight_ih on meta": (gru_layer_case(replaced(2, lambda d, t: on_meta(t))), ValueError,
                                     r"device mismatch: weight_ih is on meta but weight is on cpu", MIXED),
    "gru_layer: h_0 a pair": (gru_layer_case(replaced(1, lambda d, t: (t, t))), TypeError,
                              r"lstm_ext.gru_layer: h_0 must be a Tensor .* got a tuple of length 2", ALL_PATHS),
    "gru_layer_inference: dtype of input": (
        lambda d: (torch.ops.lstm_ext.gru_layer_inference,
                   (randn(3, 2, 3, device=d).float(), randn(2, 4, device=d), randn(12, 3, device=d),
                    randn(12, 4, device=d), None, None, False)),
        TypeError, r"dtype mismatch: input is torch.float32 but weight is torch.float64", ALL_PATHS),
    "gru_cell: batch mismatch": (gru_cell_case(lambda d, x, h: (x, h[:2])), ValueError,
                                 r"h_0 must have shape \[3, 5\] \(batch, hidden_size\), got \[2, 5\]", ALL_PATHS),
    "gru_cell: unbatched input, batched state": (gru_cell_case(lambda d, x, h: (x[0], h)), ValueError,
                                                 r"for a 1-D input, hx must be 1-D too, got shape \(3, 5\)",
                                                 ALL_PATHS),
    "gru_cell: input 3-D": (gru_cell_case(lambda d, x, h: (x[None], h)), ValueError,
                            r"Expected input to be 1D or 2D, got 3D", ALL_PATHS),
    "gru_cell: state on meta": (gru_cell_case(lambda d, x, h: (x, on_meta(h))), ValueError,
                                r"device mismatch: h_0 is on meta but weight is on cpu", MIXED),
    "gru_cell: integer input": (gru_cell_case(lambda d, x, h: (x.long(), h)), TypeError,
                                r"input must be a dense floating point tensor .* got torch.int64", ALL_PATHS),
    "gru_layer_backward: hidden_n shape": (gru_backward_case(replaced(8, lambda d, t: t[:1])), ValueError,
                                           r"lstm_ext.gru_layer_backward: hidden_n must have shape \[3, 2, 4\]",
                                           ALL_PATHS),
    "gru_layer_backward: LSTM-sized gates": (gru_backward_case(replaced(7, lambda d, t: torch.cat([t, t[..., :4]], -1))),
                                             ValueError, r"gates must have shape \[3, 2, 12\] \(seq_len, batch, "
                                             r"3\*hidden_size\)", ALL_PATHS),
    "gru_layer_backward: grad_h_n on meta": (gru_backward_case(replaced(1, lambda d, t: on_meta(t))), ValueError,
                                             r"device mismatch: grad_h_n is on meta but weight is on cpu", MIXED),
})



def lstmp_case(change):
    """LSTM(4, 5, num_layers=2, proj_size=3) on x (5, 2, 4), h_0 (2, 2, 3), c_0 (2, 2, 5)."""
    return lstm_case(change, hidden_size=5, proj_size=3)


def projected_layer_case(change):
    """lstm_layer on x (3, 2, 3), h_0 (2, 2), c_0 (2, 4), weights for H=4, P=2 (weight_hr last); change(device, args)."""
    def build(device):
        args = [randn(3, 2, 3, device=device), randn(2, 2, device=device), randn(2, 4, device=device),
                randn(16, 3, device=device), randn(16, 2, device=device), None, None, randn(2, 4, device=device)]
        args = change(device, args)
        return (lambda x, h, c, w_ih, w_hh, w_hr: lstm_ext.lstm_layer(x, (h, c), w_ih, w_hh, weight_hr=w_hr)), \
            tuple(a for a in args if a is not None)
    return build


CASES.update({
    # --- projections (proj_size) ------------------------------------------------
    "lstmp: h_0 of hidden_size": (lstmp_case(lambda d, r, x, h, c: (x, c, c)), ValueError,
                                  r"lstm_ext.LSTM: expected h_0 of shape \(2, 2, 3\), got a tensor of shape "
                                  r"\(2, 2, 5\)", ALL_PATHS),
    "lstmp: wrong weight_hr_l1": (lstmp_case(set_param("weight_hr_l1", lambda d, w: randn(3, 4, device=d))),
                                  ValueError, r"weight_hr_l1 must have shape \(3, 5\) \(proj_size, hidden_size\), "
                                  r"got \(3, 4\)", ALL_PATHS),
    "lstmp: weight_hh_l1 of hidden_size": (
        lstmp_case(set_param("weight_hh_l1", lambda d, w: randn(20, 5, device=d))), ValueError,
        r"weight_hh_l1 must have shape \(20, 3\) \(4\*hidden_size, proj_size\), got \(20, 5\)", ALL_PATHS),
    "lstmp: weight_hr_l0 on meta": (lstmp_case(set_param("weight_hr_l0", lambda d, w: on_meta(w))), ValueError,
                                    r"device mismatch: weight_hr_l0 is on meta but input is on cpu", MIXED),
    "layer: wrong weight_hr": (projected_layer_case(replaced(7, lambda d, t: randn(2, 3, device=d))), ValueError,
                               r"with weight_hr of shape \[proj_size, hidden_size\] = \[2, 3\], weight_hh must "
                               r"have shape \[4\*hidden_size, proj_size\] = \[12, 2\], got \[16, 2\]", ALL_PATHS),
    "layer: h_0 of hidden_size with weight_hr": (
        projected_layer_case(replaced(1, lambda d, t: randn(2, 4, device=d))), ValueError,
        r"h_0 must have shape \[2, 2\] \(batch, proj_size\), got \[2, 4\]", ALL_PATHS),
    "layer: weight_hr 1-D": (projected_layer_case(replaced(7, lambda d, t: randn(8, device=d))), ValueError,
                             r"weight_hr must have shape \[proj_size, hidden_size\], got \[8\]", ALL_PATHS),
    "layer: weight_hr dtype": (projected_layer_case(replaced(7, lambda d, t: t.float())), TypeError,
                               r"dtype mismatch: weight_hr is torch.float32 but weight_hh is torch.float64",
                               ALL_PATHS),
})


def packed_layer_case(change):
    """torch.ops.lstm_ext.layer_forward on packed sequences of lengths (3, 2, 1): data (6, 3), h_0 and c_0 (3, 4),
    batch_sizes [3, 2, 1]; change(device, args) -> args."""
    def build(device):
        args = [randn(6, 3, device=device), randn(3, 4, device=device), randn(3, 4, device=device),
                randn(16, 3, device=device), randn(16, 4, device=device), None, None, False, None,
                torch.tensor([3, 2, 1])]
        return torch.ops.lstm_ext.layer_forward, tuple(change(device, args))
    return build


CASES.update({
    # --- variable lengths (batch_sizes) -------------------------------------------
    "packed layer: float batch_sizes": (packed_layer_case(replaced(9, lambda d, t: t.float())), TypeError,
                                        r"batch_sizes must be a 1-D int64 CPU tensor \(a PackedSequence's\), got a "
                                        r"1-D Float tensor on cpu", ALL_PATHS),
    "packed layer: 3-D input": (packed_layer_case(replaced(0, lambda d, t: t[None])), ValueError,
                                r"with batch_sizes, input must be 2-D \(sum of lengths, input_size\)", ALL_PATHS),
    "packed layer: h_0 of another batch": (packed_layer_case(replaced(1, lambda d, t: t[:2])), ValueError,
                                           r"c_0 must have shape \[2, 4\] \(batch, hidden_size\), got \[3, 4\]",
                                           ALL_PATHS),
    # Values: only a real kernel reads them.
    "packed layer: increasing batch_sizes": (packed_layer_case(replaced(9, lambda d, t: torch.tensor([3, 1, 2]))),
                                             ValueError, r"batch_sizes must be positive and non-increasing",
                                             ("direct", "torch.ops")),
})

def ln_layer_case(change, rates=(0.0, 0.0)):
    """layer_norm_lstm_layer on x (3, 2, 3), (h_0, c_0) (2, 4), weights for H=4 with layer norm and zoneout
    masks (3, 2, 4); change(device, args) -> args."""
    def build(device):
        args = [randn(3, 2, 3, device=device), randn(2, 4, device=device), randn(2, 4, device=device),
                randn(16, 3, device=device), randn(16, 4, device=device), randn(16, device=device),
                randn(16, device=device), randn(16, device=device), randn(4, device=device), randn(4, device=device),
                torch.zeros(3, 2, 4, device=device, dtype=F64), torch.ones(3, 2, 4, device=device, dtype=F64)]
        args = change(device, args)
        return (lambda x, h, c, *w: lstm_ext.layer_norm_lstm_layer(x, (h, c), *w, *rates)), tuple(args)
    return build


def ln_backward_case(change):
    """torch.ops.lstm_ext.ln_lstm_layer_backward with its saved tensors; change(device, args) -> args."""
    def build(device):
        x, h0, c0, w_ih, w_hh = randn(3, 2, 3), randn(2, 4), randn(2, 4), randn(16, 3), randn(16, 4)
        ln = [randn(16), randn(16), randn(4), randn(4)]
        saved = torch.ops.lstm_ext.ln_lstm_layer_forward(x, h0, c0, w_ih, w_hh, None, *ln, None, None, 0.0, 0.0,
                                                         False)
        args = [torch.randn_like(saved[0]), None, None, x, h0, c0, w_ih, w_hh, *ln, saved[0], *saved[3:]]
        args = change(device, [a.to(device) if a is not None else None for a in args])
        g, gh, gc, x, h0, c0, w_ih, w_hh, l1, l2, l3, l4, out, *rest = args
        return (lambda *a: torch.ops.lstm_ext.ln_lstm_layer_backward(
            *a[:8], False, *a[8:12], None, None, 0.0, 0.0, False, *a[12:])), tuple(args)
    return build


CASES.update({
    # --- LayerNorm LSTM and zoneout ---------------------------------------------------
    "ln_layer: ln_c_weight of 4H": (ln_layer_case(replaced(8, lambda d, t: randn(16, device=d))), ValueError,
                                    r"lstm_ext.LayerNormLSTM: ln_c_weight must have shape \[4\] \(hidden_size,\), "
                                    r"got \[16\]", ALL_PATHS),
    "ln_layer: three of the four LN tensors": (ln_layer_case(replaced(9, lambda d, t: None)), ValueError,
                                               r"given together or not at all \(3 of 4 given\)", ALL_PATHS),
    "ln_layer: h_0 of another batch": (ln_layer_case(replaced(1, lambda d, t: randn(3, 4, device=d))), ValueError,
                                       r"h_0 must have shape \[2, 4\] \(batch, hidden_size\), got \[3, 4\]",
                                       ALL_PATHS),
    "ln_layer: float32 gain": (ln_layer_case(replaced(6, lambda d, t: t.float())), TypeError,
                               r"dtype mismatch: ln_ih_weight is torch.float32 but weight_hh is torch.float64",
                               ALL_PATHS),
    "ln_layer: gain on meta": (ln_layer_case(replaced(7, lambda d, t: on_meta(t))), ValueError,
                               r"device mismatch: ln_hh_weight is on meta but weight_hh is on cpu", MIXED),
    "ln_layer: mask of one step": (ln_layer_case(replaced(10, lambda d, t: t[:1])), ValueError,
                                   r"zoneout_cell_mask must have shape \[3, 2, 4\] \(seq_len, batch, hidden_size\), "
                                   r"got \[1, 2, 4\]", ALL_PATHS),
    "ln_layer: integer mask": (ln_layer_case(replaced(11, lambda d, t: t.long())), TypeError,
                               r"zoneout_hidden_mask must be a dense floating point tensor", ALL_PATHS),
    "ln_layer: rate above 1": (ln_layer_case(lambda d, a: a, rates=(1.5, 0.0)), ValueError,
                               r"zoneout rates must be in \[0, 1\], got zoneout_cell=1.5", ALL_PATHS),
    "ln_layer: weight_hh not [4H, H]": (ln_layer_case(replaced(4, lambda d, t: randn(16, 5, device=d))), ValueError,
                                        r"weight_hh must have shape \[4\*hidden_size, hidden_size\], got \[16, 5\]",
                                        ALL_PATHS),
    "ln_backward: stats of another shape": (ln_backward_case(replaced(19, lambda d, t: t[:, :, :2])), ValueError,
                                            r"stats must have shape \[3, 2, 3\] \(as the forward saved it\), got "
                                            r"\[3, 2, 2\]", ALL_PATHS),
    "ln_backward: grad_output of another size": (ln_backward_case(replaced(0, lambda d, t: t[:2])), ValueError,
                                                 r"grad_output must have shape \[3, 2, 4\]", ALL_PATHS),
})


def ln_packed_case(change):
    """layer_norm_lstm_layer on packed data (6, 3) of batch_sizes [3, 2, 1], H=4, with layer norm."""
    def build(device):
        args = [randn(6, 3, device=device), randn(3, 4, device=device), randn(3, 4, device=device),
                randn(16, 3, device=device), randn(16, 4, device=device), randn(16, device=device),
                randn(16, device=device), randn(16, device=device), randn(4, device=device), randn(4, device=device),
                torch.tensor([3, 2, 1])]
        args = change(device, args)
        return (lambda x, h, c, *w: lstm_ext.layer_norm_lstm_layer(x, (h, c), *w[:7], None, None, 0.0, 0.0,
                                                                   batch_sizes=w[7])), tuple(args)
    return build


CASES.update({
    "ln packed: float batch_sizes": (ln_packed_case(replaced(10, lambda d, t: t.float())), TypeError,
                                     r"lstm_ext.LayerNormLSTM: batch_sizes must be a 1-D int64 CPU tensor", ALL_PATHS),
    "ln packed: 3-D input": (ln_packed_case(replaced(0, lambda d, t: t[None])), ValueError,
                             r"with batch_sizes, input must be 2-D \(sum of lengths, input_size\)", ALL_PATHS),
    "ln packed: increasing batch_sizes": (ln_packed_case(replaced(10, lambda d, t: torch.tensor([3, 1, 2]))),
                                          ValueError, r"batch_sizes must be positive and non-increasing",
                                          ("direct", "torch.ops")),
    "ln packed: batch_sizes of another sum": (ln_packed_case(replaced(10, lambda d, t: torch.tensor([3, 2]))),
                                              ValueError, r"batch_sizes sum to 5 but input has 6 rows",
                                              ("direct", "torch.ops")),
})


def call_on_path(path, build):
    if path == "meta":
        fn, args = build("meta")
        return fn(*args)
    fn, args = build("cpu")
    if path == "direct":
        return fn(*args)
    if path == "torch.ops":
        with RecordsTorchFunctions():  # the modules and functions then call through torch.ops
            return fn(*args)
    # Parameters are real tensors: FakeTensorMode converts them when they reach an operator.
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        return fn(*fake)


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, path):
    build, error, pattern, paths = CASES[case]
    if path not in paths:
        pytest.skip("a meta tensor among meta tensors is no mismatch")
    with pytest.raises(error, match=pattern):
        call_on_path(path, build)


@pytest.mark.parametrize("module", ["LSTM", "LSTMCell"])
def test_meta_state_under_torch_compile_is_an_error(module):
    torch._dynamo.reset()
    if module == "LSTM":
        m, x, state = lstm_ext.LSTM(4, 3), torch.randn(5, 2, 4), (torch.randn(1, 2, 3), torch.randn(1, 2, 3))
        pattern = r"device mismatch: c_0 is on meta but input is on cpu"
    else:
        m, x, state = lstm_ext.LSTMCell(4, 3), torch.randn(2, 4), (torch.randn(2, 3), torch.randn(2, 3))
        pattern = r"device mismatch: cx \(c_prev\) is on meta but weight is on cpu"
    compiled = torch.compile(m, fullgraph=True)
    with pytest.raises(Exception, match=pattern):
        compiled(x, (state[0], state[1].to("meta")))


def test_all_meta_is_shape_inference():
    with torch.device("meta"):
        rnn = lstm_ext.LSTM(4, 3, num_layers=2, bidirectional=True, batch_first=True)
        cell = lstm_ext.LSTMCell(4, 3)
        out, (h_n, c_n) = rnn(torch.randn(2, 5, 4))
        h, c = cell(torch.randn(2, 4))
    assert out.shape == (2, 5, 6) and h_n.shape == c_n.shape == (4, 2, 3) and out.is_meta
    assert h.shape == c.shape == (2, 3) and h.is_meta


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor.*deprecated")
@pytest.mark.parametrize("op", ["LSTM", "LSTMCell", "torch.ops"])
def test_quantized_and_sparse_input(op):
    q = torch.quantize_per_tensor(torch.randn(5, 2, 4), 0.1, 0, torch.quint8)
    pattern = r"input must be a dense floating point tensor .* got a quantized tensor \(torch.quint8\)"
    with pytest.raises(TypeError, match=pattern):
        if op == "LSTM":
            lstm_ext.LSTM(4, 3)(q)
        elif op == "LSTMCell":
            lstm_ext.LSTMCell(4, 3)(q[0])
        else:
            torch.ops.lstm_ext.cell_forward(q[0], torch.randn(2, 3), torch.randn(2, 3), torch.randn(12, 7), None)
    with pytest.raises(TypeError, match=r"input must be a dense floating point tensor .* layout Sparse"):
        lstm_ext.LSTMCell(4, 3)(torch.randn(2, 4).to_sparse(), (torch.randn(2, 3), torch.randn(2, 3)))


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(proj_size=-1), ValueError, r"proj_size should be a positive integer or zero to disable projections"),
    (dict(proj_size=3), ValueError, r"proj_size has to be smaller than hidden_size"),
    (dict(hidden_size=2.5), TypeError, r"hidden_size should be of type int, got: float"),
    (dict(hidden_size="3"), TypeError, r"hidden_size should be of type int, got: str"),
    (dict(input_size=0), ValueError, r"input_size must be greater than zero"),
    (dict(num_layers=0), ValueError, r"num_layers must be greater than zero"),
    (dict(num_layers=2.0), TypeError, r"num_layers should be of type int, got: float"),  # torch: a bare TypeError
    (dict(dropout=1.5), ValueError, r"dropout should be a number in range \[0, 1\]"),
    (dict(bias=1), TypeError, r"bias should be of type bool, got: int"),
], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_constructor_errors_like_torch(kwargs, error, pattern):
    args = dict(input_size=4, hidden_size=3) | kwargs
    with pytest.raises(error, match=pattern):
        lstm_ext.LSTM(**args)
    if error is not NotImplementedError and "num_layers" not in kwargs:  # torch.nn.LSTM raises the same
        with pytest.raises(error, match=pattern):
            nn.LSTM(**args)


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(hidden_size=2.5), TypeError, r"hidden_size should be of type int, got: float"),
    (dict(input_size="4"), TypeError, r"input_size should be of type int, got: str"),
    (dict(hidden_size=0), ValueError, r"hidden_size must be greater than zero"),
    (dict(input_size=-1), ValueError, r"input_size must be zero or greater"),
], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_cell_constructor_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        lstm_ext.LSTMCell(**(dict(input_size=4, hidden_size=3) | kwargs))


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match=r"non-zero dropout expects num_layers greater than 1"):
        lstm_ext.LSTM(4, 3, dropout=0.5)


def test_cell_given_a_list():
    with pytest.raises(TypeError, match=r"lstm_ext.LSTMCell: input must be a Tensor .* got a list of length 4"):
        lstm_ext.LSTMCell(4, 3)([1.0, 2.0, 3.0, 4.0])


def test_set_cpu_capability_not_a_name():
    with pytest.raises(TypeError, match=r"set_cpu_capability: name must be a str .* got NoneType"):
        lstm_ext.set_cpu_capability(None)
    with pytest.raises(ValueError, match=r"CPU capability 'AVX1024' is not available here"):
        lstm_ext.set_cpu_capability("AVX1024")

