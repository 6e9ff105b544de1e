"""PyTorch as a runner (the reference, and the eager / channels-last / torch.compile rows)."""
import numpy as np
import pytest
import torch
from conftest import relative_error, seeded

from mnv4.runtimes.torch import TorchRunner


# torch.compile (half a minute to compile on 2 cores) is measured and judged by the bench round trip's
# torch-compile row (test_bench.py).
@pytest.mark.parametrize("mode", ["channels_last"])
def test_torch_modes_match_eager(mode):
    conv_small = seeded("conv_small")
    inputs = conv_small.inputs[:3]
    eager = TorchRunner(conv_small.model, threads=2)(inputs)
    assert relative_error(conv_small.logits[:3], eager) <= 1e-5
    other = TorchRunner(conv_small.model, threads=2, mode=mode)(inputs)
    assert other.dtype == np.float32 and other.shape == eager.shape
    assert relative_error(eager, other) <= 1e-4
    # The caller's model (here the shared reference) keeps its NCHW weights.
    assert conv_small.model.conv_stem.weight.is_contiguous()


def test_threads_are_restored_and_modes_checked():
    conv_small = seeded("conv_small")
    before = torch.get_num_threads()
    TorchRunner(conv_small.model, threads=1)(conv_small.inputs[:1])
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="unknown torch mode"):
        TorchRunner(conv_small.model, mode="jit")
