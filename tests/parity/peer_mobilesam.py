"""The PyTorch peer of finesam's MobileSAM image encoder: the official `vit_t` image encoder
(TinyViT + neck) at 1024x1024, batch 1, timed on the GPU with CUDA events: eager fp32, eager
fp16 and torch.compile(mode="reduce-overhead") fp16 (CUDA graphs; failures are caught and
reported, e.g. when compilation cannot run offline). Writes {name: median ms} JSON, read by
benches/mobilesam_encoder.rs.

    python3 tests/parity/peer_mobilesam.py OUT.json
"""

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import official  # noqa: E402
from peer_preprocess import median_ms  # noqa: E402


def main():
    mobile_sam = official.mobile_sam()
    sam = mobile_sam.sam_model_registry["vit_t"]()
    official.randomize(sam, 1234)
    encoder = sam.image_encoder.cuda().eval()
    x = torch.randn(1, 3, 1024, 1024, device="cuda")
    rows = {}
    with torch.no_grad():
        rows["encoder eager fp32"] = median_ms(lambda: encoder(x), reps=100)
        half = encoder.half()
        xh = x.half()
        rows["encoder eager fp16"] = median_ms(lambda: half(xh))
        try:
            started = time.time()
            compiled = torch.compile(half, mode="reduce-overhead")
            for _ in range(3):  # compile and record the CUDA graph
                compiled(xh)
            rows["encoder torch.compile reduce-overhead fp16"] = median_ms(lambda: compiled(xh))
            print(f"torch.compile took {time.time() - started:.0f} s")
        except Exception as e:  # report and keep the eager rows
            print(f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    print(f"PyTorch peer on {torch.cuda.get_device_name()} (torch {torch.__version__}), medians:")
    for name, ms in rows.items():
        print(f"  {name:<44} {ms:.4f} ms")
    Path(sys.argv[1]).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
