"""MobileSAM parity references (section `mobilesam` of generate.py).

Builds the official `vit_t` model with seeded random weights (official.randomize), redraws
the output upscaling's LayerNorm2d scale and second ConvTranspose2d (see `sharpen_upscaling`),
scales the mask head so low-res logits have std ~2 as trained weights give (random heads give
std ~0.03, which would make every threshold decision fragile), and writes:
- mobilesam/weights.safetensors: the state dict, official key names (what finesam loads);
- mobilesam/<image>.safetensors: the official preprocessed input, per-stage encoder outputs
  (patch_embed, layers.0-3, embedding after the neck), and for each prompt set the low-res
  mask logits and IoU predictions of `SamPredictor.predict_torch` (the final masks follow from
  the low-res logits by Sam.postprocess_masks, which tests/gpu_mask.rs checks on its own).
Prompt sets: 1, 8 and 32 boxes (single mask), 3 points with labels (multimask), 8 boxes
(multimask); `boxes8_mask`: boxes8's boxes with boxes8's own low-res logits as `mask_input`
(iterative refinement, as SamPredictor.predict(mask_input=...) is used; single mask), stored
as `boxes8_mask.mask_input` [8, 1, 256, 256]; `boxpoints4_multi`: 4 boxes, each with 2 points
(labels 1, 0: `.points` [4, 2, 2], `.point_labels` [4, 2]; multimask). Inputs are in frame
pixels; metadata records the frame size and format.
"""

from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from safetensors.torch import save_file as save_torch

import official
from generate import frames

SEED = 1234
# The frames generate.py builds (native sizes and 1920x1080) that the MobileSAM tests use.
CASES = {"astronaut_512x512", "coffee_600x400", "chelsea_451x300", "camera_512x512", "astronaut_1920x1080"}


def build(device):
    mobile_sam = official.mobile_sam()
    # Construction draws buffers randomize() leaves alone (the prompt encoder's random Fourier
    # matrix) from the global RNG: seed it, so the fixtures do not depend on which generator
    # sections ran before this one.
    torch.manual_seed(SEED)
    sam = mobile_sam.sam_model_registry["vit_t"]()
    official.randomize(sam, SEED)
    sharpen_upscaling(sam, SEED)
    scale_mask_downscaling(sam, SEED)
    return sam.to(device).eval(), mobile_sam


def sharpen_upscaling(sam, seed):
    """Gives the random mask decoder decisive masks, as trained SAM has, without changing the
    model: only the values of two random tensors of `mask_decoder.output_upscaling` are redrawn.
    official.randomize treats the LayerNorm2d `output_upscaling.1` (no 'norm' in its name) as a
    bias, N(0, 0.1): its scale shrinks the normalised features ~10x, both GELUs then run in
    their near-linear range and the upscaled map is its biases plus a faint spatial signal, so
    after the mask head is scaled a mask can be a wide near-zero plateau whose threshold
    decisions flip on fp16 rounding (the likely cause of masks with IoU < 0.98 at logit errors
    ~10x inside tolerance). Draw that scale U(0.5, 1.5) as randomize does for every
    other norm, and the second ConvTranspose2d ([in 64, out 32, 2, 2]; randomize takes the fan-in
    from out * 4 = 128) with std 1/sqrt(64) of its true fan-in. The image encoder and prompt
    encoder are untouched (their fixtures do not change)."""
    gen = torch.Generator().manual_seed(seed + 1)
    up = sam.mask_decoder.output_upscaling
    with torch.no_grad():
        up[1].weight.copy_(torch.rand(up[1].weight.shape, generator=gen) + 0.5)
        up[3].weight.copy_(torch.randn(up[3].weight.shape, generator=gen) * up[3].weight.shape[0] ** -0.5)


def scale_mask_downscaling(sam, seed):
    """official.randomize treats the two LayerNorm2d of `prompt_encoder.mask_downscaling`
    (no 'norm' in their names) as biases, N(0, 0.1): the dense mask embedding would come out
    ~10x smaller than the image embedding it is added to, so mistakes in the mask path would
    hardly move the logits. Draw their scales U(0.5, 1.5) as randomize does for every other
    norm (own generator: nothing else changes; no other prompt set reads these tensors)."""
    gen = torch.Generator().manual_seed(seed + 2)
    down = sam.prompt_encoder.mask_downscaling
    with torch.no_grad():
        for norm in (down[1], down[4]):
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=gen) + 0.5)


def random_boxes(rng, count, width, height):
    x0 = rng.uniform(0, width * 0.8, count)
    y0 = rng.uniform(0, height * 0.8, count)
    w = rng.uniform(width * 0.05, width * 0.5, count)
    h = rng.uniform(height * 0.05, height * 0.5, count)
    return np.stack([x0, y0, np.minimum(x0 + w, width - 1), np.minimum(y0 + h, height - 1)], 1).astype(np.float32)


def scale_mask_head(sam, predictor, target_std=2.0):
    """Scales the hypernetwork MLPs' last layers so low-res logits have std ~target_std
    (the masks are linear in them)."""
    boxes = torch.tensor([[100.0, 100.0, 400.0, 400.0]], device=predictor.device)
    _, _, low = predictor.predict_torch(None, None, predictor.transform.apply_boxes_torch(boxes, predictor.original_size), multimask_output=True)
    factor = target_std / float(low.std())
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(factor)
            mlp.layers[-1].bias.mul_(factor)
    return factor


def generate(out_dir: Path):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sam, mobile_sam = build(device)
    predictor = mobile_sam.SamPredictor(sam)
    out = out_dir / "mobilesam"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    # The sets added later draw from their own generator, so the earlier sets keep their inputs.
    extra_rng = np.random.default_rng(SEED + 2)
    stages = {}
    encoder = sam.image_encoder
    hooks = [encoder.patch_embed.register_forward_hook(lambda m, i, o: stages.__setitem__("patch_embed", o))]
    for n, layer in enumerate(encoder.layers):
        hooks.append(layer.register_forward_hook(lambda m, i, o, n=n: stages.__setitem__(f"layers.{n}", o)))
    factor = None
    with torch.no_grad():
        for name, stored, fmt, rgb in frames():
            if name not in CASES:
                continue
            height, width = rgb.shape[:2]
            x = torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None].float()
            transformed = predictor.transform.apply_image_torch(x)
            predictor.set_torch_image(transformed, (height, width))
            if factor is None:
                factor = scale_mask_head(sam, predictor)
                save_torch({k: v.contiguous() for k, v in sam.state_dict().items()}, str(out / "weights.safetensors"))
                print(f"mobilesam: weights (seed {SEED}, mask head x{factor:.1f})")
            tensors = {
                "frame": stored,
                "input": sam.preprocess(transformed)[0].float().cpu().numpy(),
                "embedding": predictor.features[0].float().cpu().numpy(),
            }
            for stage, value in stages.items():
                # The layers return transposed views (PatchMerging's `flatten(2).transpose(1, 2)`,
                # and TinyViTBlock's `x + mlp(x)` inherits the channel-first strides of its
                # `view(B, C, L).transpose(1, 2)` input): [L, C] in shape, [C, L] in memory.
                # safetensors.numpy writes the raw buffer of whatever it is given, so copy to
                # C order first or the fixture holds the NCHW bytes under an [L, C] label.
                tensors[f"stage.{stage}"] = value[0].float().contiguous().cpu().numpy()
            prompt_sets = [(f"boxes{k}", k, False) for k in (1, 8, 32)] + [("boxes8_multi", 8, True), ("points3_multi", 0, True)]
            for label, count, multimask in prompt_sets:
                if count:
                    boxes = random_boxes(rng, count, width, height)
                    pts, lbl = None, None
                    box_t = predictor.transform.apply_boxes_torch(torch.from_numpy(boxes).to(device), (height, width))
                    tensors[f"{label}.boxes"] = boxes
                else:
                    points = np.stack([rng.uniform(0, width, 3), rng.uniform(0, height, 3)], 1).astype(np.float32)
                    labels = np.array([1, 1, 0], dtype=np.float32)
                    pts = predictor.transform.apply_coords_torch(torch.from_numpy(points).to(device), (height, width))[None]
                    lbl = torch.from_numpy(labels.astype(np.int32)).to(device)[None]
                    box_t = None
                    tensors[f"{label}.points"] = points
                    tensors[f"{label}.point_labels"] = labels
                _, iou, low = predictor.predict_torch(pts, lbl, box_t, multimask_output=multimask, return_logits=True)
                tensors[f"{label}.low_res_logits"] = low.float().cpu().numpy()
                tensors[f"{label}.iou"] = iou.float().cpu().numpy()

            # Iterative refinement: boxes8 again, its own low-res logits as the mask input.
            boxes = tensors["boxes8.boxes"]
            mask_input = tensors["boxes8.low_res_logits"]  # [8, 1, 256, 256]
            box_t = predictor.transform.apply_boxes_torch(torch.from_numpy(boxes).to(device), (height, width))
            _, iou, low = predictor.predict_torch(None, None, box_t, mask_input=torch.from_numpy(mask_input).to(device),
                                                  multimask_output=False, return_logits=True)
            tensors["boxes8_mask.boxes"] = boxes
            tensors["boxes8_mask.mask_input"] = mask_input
            tensors["boxes8_mask.low_res_logits"] = low.float().cpu().numpy()
            tensors["boxes8_mask.iou"] = iou.float().cpu().numpy()

            # Boxes with points: per box a foreground point inside it and a background point
            # anywhere (PromptEncoder embeds the points unpadded, then the box corners).
            boxes = random_boxes(extra_rng, 4, width, height)
            inside = np.stack([extra_rng.uniform(boxes[:, 0], boxes[:, 2]), extra_rng.uniform(boxes[:, 1], boxes[:, 3])], 1)
            anywhere = np.stack([extra_rng.uniform(0, width, 4), extra_rng.uniform(0, height, 4)], 1)
            points = np.stack([inside, anywhere], 1).astype(np.float32)  # [4, 2, 2]
            labels = np.tile(np.array([1, 0], dtype=np.float32), (4, 1))  # [4, 2]
            box_t = predictor.transform.apply_boxes_torch(torch.from_numpy(boxes).to(device), (height, width))
            pts = predictor.transform.apply_coords_torch(torch.from_numpy(points).to(device), (height, width))
            lbl = torch.from_numpy(labels.astype(np.int32)).to(device)
            _, iou, low = predictor.predict_torch(pts, lbl, box_t, multimask_output=True, return_logits=True)
            tensors["boxpoints4_multi.boxes"] = boxes
            tensors["boxpoints4_multi.points"] = points
            tensors["boxpoints4_multi.point_labels"] = labels
            tensors["boxpoints4_multi.low_res_logits"] = low.float().cpu().numpy()
            tensors["boxpoints4_multi.iou"] = iou.float().cpu().numpy()
            tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
            save_file(tensors, str(out / f"{name}.safetensors"), metadata={"format": fmt, "image": name})
            print(f"mobilesam/{name}: embedding std {tensors['embedding'].std():.3f}, "
                  f"boxes8 low-res logit std {tensors['boxes8.low_res_logits'].std():.2f}")
    for h in hooks:
        h.remove()
