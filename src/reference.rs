//! CPU reference implementations of what the kernels compute, in f64, for tests: the GPU
//! kernels are checked against these on fresh random inputs, and these are checked against
//! hand-derived values of the PyTorch ops they mirror. Not a fallback: nothing in the runtime
//! calls them.

use crate::error::Result;
use crate::frame::{
    sam_extent, Frame, PixelFormat, DFINE_INPUT_SIZE, SAM_INPUT_SIZE, SAM_PIXEL_MEAN, SAM_PIXEL_STD,
};

/// Input span and normalised weights of one output index, as ATen's `upsample_bilinear2d_aa`
/// computes them (triangle filter, support scaled by the downscale factor).
pub fn antialias_weights(out_index: usize, in_size: usize, out_size: usize) -> (usize, Vec<f64>) {
    let scale = in_size as f64 / out_size as f64;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let center = scale * (out_index as f64 + 0.5);
    let start = ((center - support + 0.5) as i64).max(0) as usize;
    let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
    let inv_scale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut weights: Vec<f64> = (start..end)
        .map(|j| {
            let x = ((j as f64 - center + 0.5) * inv_scale).abs();
            if x < 1.0 {
                1.0 - x
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    if total != 0.0 {
        weights.iter_mut().for_each(|w| *w /= total);
    }
    (start, weights)
}

fn pixel_rgb(frame: &Frame<'_>, x: usize, y: usize) -> [f64; 3] {
    let bpp = frame.format.bytes_per_pixel();
    let p = &frame.data[y * frame.row_stride + x * bpp..];
    match frame.format {
        PixelFormat::Gray8 => [p[0] as f64; 3],
        PixelFormat::Bgr8 => [p[2] as f64, p[1] as f64, p[0] as f64],
        PixelFormat::Rgb8 | PixelFormat::Rgba8 => [p[0] as f64, p[1] as f64, p[2] as f64],
    }
}

/// `F.interpolate(frame, (out_h, out_w), "bilinear", align_corners=False, antialias=True)` on
/// 0..255 RGB values; returns planar RGB (3 x out_h x out_w).
pub fn resize_antialias(frame: &Frame<'_>, out_w: usize, out_h: usize) -> Vec<f64> {
    let xs: Vec<_> = (0..out_w)
        .map(|x| antialias_weights(x, frame.width as usize, out_w))
        .collect();
    let mut out = vec![0.0; 3 * out_w * out_h];
    for oy in 0..out_h {
        let (y0, wy) = antialias_weights(oy, frame.height as usize, out_h);
        for (ox, (x0, wx)) in xs.iter().enumerate() {
            let mut acc = [0.0; 3];
            for (j, w_y) in wy.iter().enumerate() {
                for (i, w_x) in wx.iter().enumerate() {
                    let p = pixel_rgb(frame, x0 + i, y0 + j);
                    for c in 0..3 {
                        acc[c] += w_y * w_x * p[c];
                    }
                }
            }
            for c in 0..3 {
                out[c * out_w * out_h + oy * out_w + ox] = acc[c];
            }
        }
    }
    out
}

/// The D-FINE input: 640x640 planar RGB in 0..1.
pub fn dfine_input(frame: &Frame<'_>) -> Vec<f64> {
    let size = DFINE_INPUT_SIZE as usize;
    let mut out = resize_antialias(frame, size, size);
    out.iter_mut().for_each(|v| *v /= 255.0);
    out
}

/// The MobileSAM input: resized to the longest side 1024, normalised, zero-padded to 1024x1024.
pub fn sam_input(frame: &Frame<'_>) -> Result<Vec<f64>> {
    let (w, h) = sam_extent(frame.width, frame.height)?;
    let (w, h) = (w as usize, h as usize);
    let size = SAM_INPUT_SIZE as usize;
    let resized = resize_antialias(frame, w, h);
    let mut out = vec![0.0; 3 * size * size];
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let v = resized[c * w * h + y * w + x];
                out[c * size * size + y * size + x] =
                    (v - SAM_PIXEL_MEAN[c] as f64) / SAM_PIXEL_STD[c] as f64;
            }
        }
    }
    Ok(out)
}

/// One bilinear tap pair of `F.interpolate(mode="bilinear", align_corners=False)` (no
/// antialias): source index pair and weights for output index `dst`.
fn bilinear_taps(in_size: usize, out_size: usize, dst: usize) -> (usize, usize, f64, f64) {
    let scale = in_size as f64 / out_size as f64;
    let src = (scale * (dst as f64 + 0.5) - 0.5).max(0.0);
    let i0 = (src as usize).min(in_size - 1);
    let i1 = (i0 + 1).min(in_size - 1);
    let w1 = src - i0 as f64;
    (i0, i1, 1.0 - w1, w1)
}

/// The logit of frame pixel (x, y) after `Sam.postprocess_masks`: low-res 256x256 logits
/// upsampled to 1024x1024, cropped to the SAM extent, resized to the frame (both bilinear,
/// align_corners=False). The mask is `logit > 0`.
pub fn mask_logit(
    low_res: &[f32],
    (frame_w, frame_h): (usize, usize),
    (sam_w, sam_h): (usize, usize),
    (x, y): (usize, usize),
) -> f64 {
    const LOW: usize = 256;
    const SAM: usize = SAM_INPUT_SIZE as usize;
    let upsampled = |u: usize, v: usize| {
        let (y0, y1, wy0, wy1) = bilinear_taps(LOW, SAM, v);
        let (x0, x1, wx0, wx1) = bilinear_taps(LOW, SAM, u);
        let at = |r: usize, c: usize| low_res[r * LOW + c] as f64;
        wy0 * (wx0 * at(y0, x0) + wx1 * at(y0, x1)) + wy1 * (wx0 * at(y1, x0) + wx1 * at(y1, x1))
    };
    let (v0, v1, wy0, wy1) = bilinear_taps(sam_h, frame_h, y);
    let (u0, u1, wx0, wx1) = bilinear_taps(sam_w, frame_w, x);
    wy0 * (wx0 * upsampled(u0, v0) + wx1 * upsampled(u1, v0))
        + wy1 * (wx0 * upsampled(u0, v1) + wx1 * upsampled(u1, v1))
}
