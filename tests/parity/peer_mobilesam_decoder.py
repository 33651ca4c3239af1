"""The PyTorch peer of finesam's MobileSAM prompt encoder + mask decoder, timed on the GPU with
CUDA events: for 1, 8 and 32 boxes on a 1920x1080 frame, `SamPredictor.predict_torch` from a set
image embedding (box transform, prompt encoder, mask decoder, `postprocess_masks` to the frame,
threshold), eager fp32, official `vit_t` with seeded random weights. Writes {name: median ms}
JSON to argv[1].

    python3 tests/parity/peer_mobilesam_decoder.py OUT.json
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import official  # noqa: E402
from peer_preprocess import median_ms  # noqa: E402

WIDTH, HEIGHT = 1920, 1080


def main():
    mobile_sam = official.mobile_sam()
    sam = mobile_sam.sam_model_registry["vit_t"]()
    official.randomize(sam, 1234)
    sam = sam.cuda().eval()
    predictor = mobile_sam.SamPredictor(sam)
    rng = np.random.default_rng(7)
    frame = torch.from_numpy(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).cuda()
    results = {}
    with torch.no_grad():
        x = frame.permute(2, 0, 1)[None].float()
        predictor.set_torch_image(predictor.transform.apply_image_torch(x), (HEIGHT, WIDTH))
        for k in (1, 8, 32):
            x0 = rng.uniform(0, WIDTH * 0.7, k)
            y0 = rng.uniform(0, HEIGHT * 0.7, k)
            boxes = np.stack([x0, y0, x0 + rng.uniform(100, 500, k), y0 + rng.uniform(80, 300, k)], 1)
            boxes = torch.tensor(boxes, dtype=torch.float32, device="cuda")

            def run():
                b = predictor.transform.apply_boxes_torch(boxes, (HEIGHT, WIDTH))
                return predictor.predict_torch(None, None, b, multimask_output=False)

            results[f"mobilesam_decoder_{k}_boxes_masks_1920x1080_eager_fp32"] = median_ms(run, reps=50, warmup=5)
    for name, ms in results.items():
        print(f"{name}: {ms:.3f} ms")
    Path(sys.argv[1]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
