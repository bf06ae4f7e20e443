"""Shared fixtures: devices (CUDA cases run where a GPU is present) and tolerances."""
import pytest
import torch

import lstm_ext

# (rtol, atol) against the reference computed in the same dtype.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
}


def gradient_atol(atol: float, expected: torch.Tensor) -> float:
    """atol for a float32 gradient compared with torch.nn's: atol times the
    gradient's largest magnitude (at least 1). A weight gradient sums T*B rows,
    and float32 summed in another order (cuBLAS against cuDNN) moves an element
    by ~1e-6 of the gradient's scale (1.3e-5 and 2.2e-5 at scales of ~8 and
    ~14 on an H200)."""
    return atol * max(1.0, expected.abs().max().item())


def cuda_usable() -> bool:
    return torch.cuda.is_available()


@pytest.fixture(params=["cpu", "cpu-generic", "cuda"])
def device(request) -> str:
    """The device to test on. "cpu-generic" is the CPU with the operators sent
    down the device-generic path that CUDA tensors take (ATen products, one
    product and one pointwise launch per step), so that path's logic is
    tested without a GPU; only the CUDA pointwise kernel itself then needs one."""
    if request.param == "cuda":
        if not cuda_usable():
            pytest.skip("no CUDA device")
        # A GPU is present: a build without CUDA kernels is a failure, not a skip.
        assert lstm_ext.backends()["cuda"], "a GPU is present but lstm_ext was built without CUDA"
        # torch.nn's cuDNN RNNs compute float32 in TF32 unless told not to
        # (torch.backends.cudnn.allow_tf32, on by default: ~1e-4 off float32 on
        # an H200); lstm_ext's products follow torch.backends.cuda.matmul.allow_tf32
        # (off by default). Compare float32 with float32.
        previous = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        yield "cuda"
        torch.backends.cudnn.allow_tf32 = previous
        return
    if request.param == "cpu-generic":
        previous = lstm_ext._C._set_cpu_specialized(False)
        yield "cpu"
        lstm_ext._C._set_cpu_specialized(previous)
        return
    yield request.param


def available_cpu_capabilities():
    """Every CPU kernel variant that this build has and this CPU can run."""
    current = lstm_ext.cpu_capability()
    usable = []
    for name in lstm_ext.backends()["cpu"]:
        try:
            lstm_ext.set_cpu_capability(name)
            usable.append(name)
        except ValueError:
            pass
    lstm_ext.set_cpu_capability(current)
    return usable


@pytest.fixture(params=available_cpu_capabilities())
def cpu_capability(request):
    """Runs a test once per CPU kernel variant, then restores the default."""
    previous = lstm_ext.cpu_capability()
    lstm_ext.set_cpu_capability(request.param)
    yield request.param
    lstm_ext.set_cpu_capability(previous)


def make_pair(input_size, hidden_size, dtype=torch.float64, device="cpu", bias=True, seed=0):
    """A reference cell and a fused cell with the same weights."""
    torch.manual_seed(seed)
    ref = lstm_ext.reference.LSTMCell(input_size, hidden_size).to(device=device, dtype=dtype)
    if not bias:
        for gate in (ref.Wf, ref.Wi, ref.Wc, ref.Wo):
            gate.bias = None
    fused = lstm_ext.LSTMCell(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def random_state(batch, input_size, hidden_size, dtype=torch.float64, device="cpu", requires_grad=True):
    x = torch.randn(batch, input_size, dtype=dtype, device=device)
    h = torch.randn(batch, hidden_size, dtype=dtype, device=device)
    c = torch.randn(batch, hidden_size, dtype=dtype, device=device)
    return [t.requires_grad_(requires_grad) for t in (x, h, c)]


def pytest_report_header(config):
    return (f"lstm_ext {lstm_ext.__version__} from {lstm_ext.__file__}, native library "
            f"{lstm_ext._C.__file__}, backends {lstm_ext.backends()}, CPU kernels {lstm_ext.cpu_capability()}, "
            f"torch {torch.__version__}")


class RecordsTorchFunctions(torch.overrides.TorchFunctionMode):
    """Records the functions called under it. The modules then call operators
    through torch.ops (which the mode sees) instead of their direct bindings."""

    def __init__(self):
        super().__init__()
        self.called = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.called.append(func)
        return func(*args, **(kwargs or {}))
