"""On a real NVIDIA GPU (marked `cuda`, deselected by default: `pytest -m cuda`): the simulator's kernel, training
and eager tests (sim/) run on the hardware, with tracejit's own GEMM and, where CuPy is installed, with cuBLAS;
and a LeNet-sized training step on the GPU against the CPU."""

import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))

pytestmark = pytest.mark.cuda


def _run(module, tmp_path, **env_extra):
    # a kernel cache shared by the runs where one is given (benchmarks/gpu_check.sh: real compiles cost ~0.3 s per
    # kernel, and the runs share most kernels)
    env = dict(os.environ, TRACEJIT_CUDA_TESTS="gpu",
               TRACEJIT_CACHE_DIR=os.environ.get("TRACEJIT_CACHE_DIR") or str(tmp_path / "cache"),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **env_extra)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           os.path.join(HERE, "sim", module)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-12000:]


def test_lenet_steps_on_the_gpu_equal_the_cpu():
    import tracejit as tj
    import tracejit.nn.functional as F
    from tracejit.bench.workloads import LeNet

    assert tj.cuda.is_available()

    def run(device):
        tj.manual_seed(0)
        model = LeNet().to(device)
        opt = tj.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        @tj.compile
        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        rng = np.random.default_rng(0)
        losses = []
        for _ in range(3):
            x = tj.from_numpy(rng.standard_normal((64, 3, 32, 32), dtype=np.float32)).to(device)
            y = tj.from_numpy(rng.integers(0, 10, 64)).to(device)
            losses.append(step(x, y).item())
        return model, losses, step

    mc, lc, _ = run("cpu")
    mg, lg, step = run("cuda")
    np.testing.assert_allclose(lg, lc, rtol=1e-4)
    for p, q in zip(mc.parameters(), mg.parameters()):
        np.testing.assert_allclose(q.detach().cpu().numpy(), p.detach().numpy(), rtol=1e-3, atol=1e-5)
    assert step.latest().program.fallbacks == []


# (after the LeNet step: the most telling single check comes first when time on the GPU is short)
@pytest.mark.parametrize("module", ["test_training.py", "test_kernels.py", "test_eager.py"])
def test_the_simulated_tests_pass_on_the_gpu(module, tmp_path):
    _run(module, tmp_path)  # GEMMs through cuBLAS where CuPy is installed


@pytest.mark.parametrize("module", ["test_training.py", "test_kernels.py"])
def test_the_simulated_tests_pass_on_the_gpu_with_tracejits_gemm(module, tmp_path):
    _run(module, tmp_path, TRACEJIT_CUDA_GEMM="tracejit")
