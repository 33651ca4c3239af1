"""Reference generator for the GPU parity tests: builds the official PyTorch modules from the
pip wheels (official.py), randomises them by seed where a model is involved, and writes inputs
and expected outputs as .safetensors under OUT_DIR/<section>/, which the Rust GPU tests read
through $FINESAM_FIXTURES.

    python3 tests/parity/generate.py OUT_DIR [section ...]     # default: every section

Sections: preprocess (this file); further sections live in tests/parity/gen_<section>.py and
expose generate(out_dir: Path).
"""

import importlib
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).parent))
import official  # noqa: E402

# (skimage image, pixel format it is stored in)
IMAGES = [("astronaut", "rgb8"), ("coffee", "bgr8"), ("chelsea", "rgba8"), ("camera", "gray8")]
# Frame sizes besides each image's own, as (width, height): odd, tall, full HD.
SIZES = [(1037, 771), (333, 1999), (1920, 1080)]


def frames():
    """Yields (name, stored frame HxWxC uint8, format, RGB HxWx3 uint8) for every case."""
    import cv2
    from skimage import data

    rng = np.random.default_rng(20261127)
    for image, fmt in IMAGES:
        rgb = getattr(data, image)()
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        native = (rgb.shape[1], rgb.shape[0])
        for width, height in [native] + SIZES:
            resized = rgb if (width, height) == native else cv2.resize(
                rgb, (width, height), interpolation=cv2.INTER_AREA
            )
            resized = np.ascontiguousarray(resized)
            if fmt == "gray8":
                stored = resized[:, :, :1]
            elif fmt == "bgr8":
                stored = resized[:, :, ::-1]
            elif fmt == "rgba8":
                alpha = rng.integers(0, 256, size=resized.shape[:2] + (1,), dtype=np.uint8)
                stored = np.concatenate([resized, alpha], axis=2)
            else:
                stored = resized
            yield f"{image}_{width}x{height}", np.ascontiguousarray(stored), fmt, resized


def preprocess(out_dir: Path):
    """D-FINE input: F.interpolate(640x640, bilinear, antialias)/255. MobileSAM input: the
    official ResizeLongestSide(1024).apply_image_torch + Sam.preprocess."""
    mobile_sam = official.mobile_sam()
    from mobile_sam.utils.transforms import ResizeLongestSide

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sam = mobile_sam.sam_model_registry["vit_t"]().to(device).eval()
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    out = out_dir / "preprocess"
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    with torch.no_grad():
        for name, stored, fmt, rgb in frames():
            x = torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None].float()
            dfine = F.interpolate(x, (640, 640), mode="bilinear", align_corners=False, antialias=True) / 255.0
            sam_input = sam.preprocess(transform.apply_image_torch(x))
            save_file(
                {
                    "frame": stored,
                    "dfine_input": dfine[0].float().cpu().numpy(),
                    "sam_input": sam_input[0].float().cpu().numpy(),
                },
                str(out / f"{name}.safetensors"),
                metadata={"format": fmt, "image": name},
            )
            count += 1
            print(f"preprocess/{name}: {fmt}, SAM extent {tuple(sam_input.shape)} from {rgb.shape[1]}x{rgb.shape[0]}")
    print(f"preprocess: {count} cases on {device}")


def blob_logits(rng, count, extent):
    """Smooth blob-shaped low-res logits inside the SAM extent, like a mask head's output."""
    ys, xs = np.mgrid[0:256, 0:256].astype(np.float32)
    out = np.full((count, 256, 256), -1.0, dtype=np.float32)
    for k in range(count):
        for _ in range(rng.integers(2, 6)):
            cx, cy = rng.uniform(0, extent[0] / 4), rng.uniform(0, extent[1] / 4)
            r, a = rng.uniform(3, 40), rng.uniform(0.5, 4.0)
            out[k] += a * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r))
    return out


def masks(out_dir: Path):
    """Official Sam.postprocess_masks (upsample to 1024, crop to the resized extent, resize to
    the frame) on smooth random low-res logits; the masks are `logits > 0`."""
    mobile_sam = official.mobile_sam()
    from mobile_sam.utils.transforms import ResizeLongestSide

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sam = mobile_sam.sam_model_registry["vit_t"]().to(device).eval()
    out = out_dir / "masks"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    with torch.no_grad():
        for (width, height), count in [((1920, 1080), 3), ((1037, 771), 2), ((333, 1999), 2), ((512, 512), 2)]:
            input_size = ResizeLongestSide(1024).get_preprocess_shape(height, width, 1024)
            low = blob_logits(rng, count, (input_size[1], input_size[0]))
            logits = sam.postprocess_masks(torch.from_numpy(low)[:, None].to(device), input_size, (height, width))
            save_file(
                {"low_res_logits": low, "logits": logits[:, 0].float().cpu().numpy()},
                str(out / f"masks_{width}x{height}.safetensors"),
            )
            print(f"masks/{width}x{height}: {count} masks, extent {input_size}, "
                  f"{int((logits > 0).sum())} set pixels")


SECTIONS = {"preprocess": preprocess, "masks": masks}


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out_dir = Path(sys.argv[1])
    wanted = sys.argv[2:] or list(SECTIONS) + sorted(
        p.stem[len("gen_"):] for p in Path(__file__).parent.glob("gen_*.py")
    )
    torch.manual_seed(0)
    # True fp32 references: PyTorch runs convolutions (cudnn.allow_tf32 defaults to True; the
    # TinyViT convs, SAM's ConvTranspose2d and mask_downscaling) in TF32, ~1e-3 relative error,
    # as large as the fp16 error under test, and its algorithm choice can vary between runs.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    failed = []
    for section in wanted:
        # One broken section must not keep the others' references from being written.
        try:
            if section in SECTIONS:
                SECTIONS[section](out_dir)
            else:
                importlib.import_module(f"gen_{section}").generate(out_dir)
        except Exception:
            import traceback

            traceback.print_exc()
            failed.append(section)
    if failed:
        sys.exit(f"generator sections failed: {failed}")


if __name__ == "__main__":
    main()
