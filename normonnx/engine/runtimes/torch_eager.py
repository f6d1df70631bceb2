"""The source PyTorch module in eager mode (runtimes "torch" and "torch-cuda"): what the ONNX file was
exported from, run on the same inputs."""
from __future__ import annotations

import copy
import os

import numpy as np

from ...core.errors import need_torch, torch_missing
from .base import Runtime, Session, SessionConfig, SessionError, register


def _open_torch(device: str):
    def open_(model_path, config: SessionConfig, module=None) -> Session:
        torch = need_torch(f"runtime {'torch' if device == 'cpu' else 'torch-' + device}")
        if module is None:
            raise SessionError("no PyTorch source module for this model")
        # nn.Module.to moves the module itself: each session gets its own copy, so that "torch" and "torch-cuda"
        # in one run do not pull each other's weights across devices (seen on a GPU machine: the CPU rows failed)
        m = copy.deepcopy(module).to(device)
        if config.threads:
            torch.set_num_threads(config.threads)

        def run(x: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(x)) if x.dtype.name != "bfloat16" else \
                torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
            with torch.inference_mode():
                y = m(t.to(device))
            if device == "cuda":
                torch.cuda.synchronize()
            y = y.cpu()
            return y.float().numpy() if y.dtype == torch.bfloat16 else y.numpy()

        return Session(f"torch-{device}" if device != "cpu" else "torch", run,
                       {"torch_version": torch.__version__, "device": device,
                        "version": torch.__version__, "precision": "eager, in the module's dtype"}, m)

    return open_


def _torch_cuda_unavailable() -> str | None:
    import sys

    missing = torch_missing()  # installed without the torch extra: say how to add it
    if missing:
        return missing
    # on Linux a machine without the NVIDIA driver's device has no CUDA for torch either: say so
    # without importing torch (seconds), so `normonnx list` and sweep's defaults stay light
    if "torch" not in sys.modules and sys.platform.startswith("linux") and not os.path.exists("/dev/nvidiactl"):
        return "no NVIDIA GPU on this machine (no /dev/nvidiactl)"
    import torch

    return None if torch.cuda.is_available() else "torch has no CUDA device here"


register(Runtime("torch", "the source PyTorch module, eager, on CPU", torch_missing, _open_torch("cpu"), kind="torch"))
register(Runtime("torch-cuda", "the source PyTorch module, eager, on CUDA", _torch_cuda_unavailable,
                 _open_torch("cuda"), kind="torch"))
