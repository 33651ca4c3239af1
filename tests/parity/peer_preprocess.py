"""The PyTorch peer of finesam's frame path, timed on the GPU with CUDA events: the pinned
upload of a 1920x1080 RGB frame and the official preprocessing of both network inputs (D-FINE
F.interpolate 640x640 antialias /255; MobileSAM ResizeLongestSide + Sam.preprocess) from the
uploaded uint8 tensor. Writes {row prefix: median ms} JSON for `finesam bench --peer`.

    python3 tests/parity/peer_preprocess.py OUT.json
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import official  # noqa: E402


def median_ms(fn, reps=200, warmup=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main():
    mobile_sam = official.mobile_sam()
    from mobile_sam.utils.transforms import ResizeLongestSide

    sam = mobile_sam.sam_model_registry["vit_t"]().cuda().eval()
    transform = ResizeLongestSide(1024)
    gen = torch.Generator().manual_seed(0)
    host = torch.randint(0, 256, (1080, 1920, 3), dtype=torch.uint8, generator=gen).pin_memory()
    device = torch.empty_like(host, device="cuda")

    def upload():
        device.copy_(host, non_blocking=True)

    def preprocess():
        x = device.permute(2, 0, 1)[None].float()
        dfine = F.interpolate(x, (640, 640), mode="bilinear", align_corners=False, antialias=True) / 255.0
        sam_input = sam.preprocess(transform.apply_image_torch(x))
        return dfine.half(), sam_input.half()

    with torch.no_grad():
        rows = {"upload": median_ms(upload), "preprocess": median_ms(preprocess)}
    print(f"PyTorch peer on {torch.cuda.get_device_name()} (torch {torch.__version__}), medians of 200:")
    for name, ms in rows.items():
        print(f"  {name:<12} {ms:.4f} ms")
    Path(sys.argv[1]).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
