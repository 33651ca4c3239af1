"""Imports the official PyTorch code (MODELS.md) from the pinned pip wheels without installing
them: MobileSAM (`mobilesam-mirror==1.0.0`, package `mobile_sam`) and D-FINE
(`d-fine-project==1.0.0`, the repository's `src/` tree).

The wheels are looked up in $FINESAM_WHEELS (the GPU bundle puts them there). Every parity
generator imports the reference modules through this file so they all use the same code.
"""

import importlib
import os
import sys
import types
import zipfile
from pathlib import Path


def wheel(prefix: str) -> Path:
    folder = Path(os.environ.get("FINESAM_WHEELS", ".bundle/wheels"))
    found = sorted(folder.glob(f"{prefix}-*.whl"))
    if not found:
        sys.exit(f"no {prefix} wheel in {folder} (set FINESAM_WHEELS; scripts/gpu-bundle.sh downloads it)")
    return found[-1]


def mobile_sam():
    """The `mobile_sam` package (pure Python, importable straight from the wheel)."""
    path = str(wheel("mobilesam_mirror"))
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module("mobile_sam")


def dfine_src(work: Path = Path("/tmp/finesam-dfine")) -> types.ModuleType:
    """The D-FINE `src` tree as a namespace package, without running its training-stack
    `__init__` files' heavy imports (faster_coco_eval and friends are stubbed)."""
    target = work / "src"
    if not target.exists():
        target.mkdir(parents=True)
        with zipfile.ZipFile(wheel("d_fine_project")) as zf:
            for name in zf.namelist():
                if ".dist-info/" not in name:
                    zf.extract(name, target)
    for stub in ["faster_coco_eval", "faster_coco_eval.core", "pycocotools", "tensorboard"]:
        sys.modules.setdefault(stub, types.ModuleType(stub))
    if str(work) not in sys.path:
        sys.path.insert(0, str(work))
    package = types.ModuleType("src")
    package.__path__ = [str(target)]
    sys.modules.setdefault("src", package)
    return package


def randomize(module, seed: int, skip=()):
    """Seeded random values for every parameter and BatchNorm statistic of `module` (the
    official initialisers leave many heads at zero or constants, which would hide code paths).
    Weights ~ N(0, 1/fan_in), biases and norm shifts ~ N(0, 0.1), norm scales ~ U(0.5, 1.5),
    running variances ~ U(0.5, 1.5). Names in `skip` (fixed hyper-parameters stored as
    parameters, e.g. D-FINE's decoder.up / decoder.reg_scale) keep their values."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def normal(t, std):
        return torch.randn(t.shape, generator=gen) * std

    with torch.no_grad():
        for name, p in module.named_parameters():
            if name in skip:
                continue
            leaf = name.rsplit(".", 1)[-1]
            is_norm = p.dim() == 1 and any(k in name for k in ("norm", "bn", ".ln", "lab"))
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(normal(p, fan_in ** -0.5))
            elif is_norm and leaf in ("weight", "scale"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(normal(p, 0.1))
        for name, b in module.named_buffers():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_mean":
                b.copy_(normal(b, 0.1))
            elif leaf == "running_var":
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return module
