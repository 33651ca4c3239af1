"""Converts an official checkpoint (.pth) to .safetensors with the key names unchanged, so
finesam loads real checkpoints exactly as the official code names them.

    python3 weights/convert.py CHECKPOINT.pth OUT.safetensors

- D-FINE checkpoints hold the weights under ["ema"]["module"] (preferred, as the official
  deploy script does) or ["model"].
- MobileSAM's `mobile_sam.pt` is a plain state dict.
Needs torch and safetensors. Prints the tensor count and what it found.
"""

import sys

import torch
from safetensors.torch import save_file


def state_dict_of(checkpoint):
    if isinstance(checkpoint, dict) and "ema" in checkpoint and "module" in checkpoint["ema"]:
        return checkpoint["ema"]["module"], "ema.module (D-FINE EMA weights)"
    if isinstance(checkpoint, dict) and "model" in checkpoint:
        return checkpoint["model"], "model (D-FINE weights)"
    if isinstance(checkpoint, dict) and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint, "plain state dict"
    sys.exit("unrecognised checkpoint: expected a state dict, or one under 'model' or 'ema'/'module'")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source, target = sys.argv[1], sys.argv[2]
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    state, where = state_dict_of(checkpoint)
    # safetensors refuses shared storage; every tensor gets its own contiguous copy.
    tensors = {name: t.detach().contiguous().clone() for name, t in state.items() if isinstance(t, torch.Tensor)}
    skipped = len(state) - len(tensors)
    save_file(tensors, target)
    params = sum(t.numel() for t in tensors.values())
    print(f"{source}: {len(tensors)} tensors ({params / 1e6:.2f} M values) from {where} -> {target}"
          + (f"; skipped {skipped} non-tensor entries" if skipped else ""))


if __name__ == "__main__":
    main()
