//! MobileSAM prompts on the host: validation, the device prompt layout the prompt encoder
//! kernel reads, and the random-Fourier positional encoding (`PositionEmbeddingRandom`) used at
//! load time for the dense 64x64 grid.
//!
//! Device layout of a prompt block: one u32 prompt count padded to 16 bytes, then
//! `[max_prompts, points, 3]` f32: x and y in **frame pixels** (the kernel scales them into the
//! 1024 frame from the frame header, as `ResizeLongestSide.apply_coords_torch` does) and a label
//! code from [`crate::ops::sam_decoder::label`].

use crate::error::{Error, Result};
use crate::ops::sam_decoder::{label, EMBED_SIDE, MASK_INPUT_PIXELS, MASK_INPUT_SIDE, SAM_DIM};

/// Bytes in front of the prompt coordinates (the u32 count, padded).
pub const PROMPT_HEADER_BYTES: usize = 16;
/// Frequencies of the positional encoding (`embed_dim // 2`).
pub const PE_FREQS: usize = SAM_DIM / 2;

/// What every prompt of a plan consists of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptKind {
    /// One box per prompt (the pipeline's case): two corner tokens.
    Boxes,
    /// `per_prompt` labelled points per prompt; `PromptEncoder` appends one padding point
    /// (boxes absent), so prompts have `per_prompt + 1` tokens.
    Points {
        /// Points given per prompt.
        per_prompt: usize,
    },
    /// A box and `points_per_prompt` labelled points per prompt: `PromptEncoder.forward` with
    /// both embeds the points first without the padding point (boxes present), then the two
    /// box corners, so prompts have `points_per_prompt + 2` tokens.
    BoxesWithPoints {
        /// Points given per prompt (at least 1).
        points_per_prompt: usize,
    },
}

impl PromptKind {
    /// Sparse tokens per prompt (device points, padding included).
    pub fn points(self) -> usize {
        match self {
            PromptKind::Boxes => 2,
            PromptKind::Points { per_prompt } => per_prompt + 1,
            PromptKind::BoxesWithPoints { points_per_prompt } => points_per_prompt + 2,
        }
    }
}

/// Prompts as the caller gives them, in frame pixels.
#[derive(Debug, Clone, Copy)]
pub enum Prompts<'a> {
    /// `[x0, y0, x1, y1]` per prompt.
    Boxes(&'a [[f32; 4]]),
    /// `per_prompt` points per prompt, prompt-major, with labels 1 (foreground), 0
    /// (background) or -1 (ignored).
    Points {
        /// `[x, y]` per point.
        coords: &'a [[f32; 2]],
        /// One label per point.
        labels: &'a [f32],
        /// Points per prompt.
        per_prompt: usize,
    },
    /// One box and `per_prompt` points per prompt (SamPredictor.predict with both
    /// `point_coords` and `box`).
    BoxesWithPoints {
        /// `[x0, y0, x1, y1]` per prompt.
        boxes: &'a [[f32; 4]],
        /// `[x, y]` per point, prompt-major (`boxes.len() * per_prompt`).
        coords: &'a [[f32; 2]],
        /// One label per point: 1, 0 or -1.
        labels: &'a [f32],
        /// Points per prompt (at least 1).
        per_prompt: usize,
    },
}

impl Prompts<'_> {
    /// The kind of plan these prompts need.
    pub fn kind(&self) -> PromptKind {
        match *self {
            Prompts::Boxes(_) => PromptKind::Boxes,
            Prompts::Points { per_prompt, .. } => PromptKind::Points { per_prompt },
            Prompts::BoxesWithPoints { per_prompt, .. } => PromptKind::BoxesWithPoints {
                points_per_prompt: per_prompt,
            },
        }
    }

    /// Number of prompts.
    pub fn count(&self) -> usize {
        match *self {
            Prompts::Boxes(boxes) => boxes.len(),
            Prompts::Points {
                coords, per_prompt, ..
            } => coords.len().checked_div(per_prompt).unwrap_or(0),
            Prompts::BoxesWithPoints { boxes, .. } => boxes.len(),
        }
    }

    /// Validates the prompts against a plan for `kind` with room for `max` prompts and returns
    /// the device prompt block (count header + `[count, points, 3]` f32).
    pub fn encode(&self, kind: PromptKind, max: usize) -> Result<Vec<u8>> {
        if self.kind() != kind {
            return Err(Error::Prompt(format!(
                "prompts are {:?} but the plan was made for {kind:?}",
                self.kind()
            )));
        }
        let count = self.count();
        if count == 0 {
            return Err(Error::Prompt("no prompts given".into()));
        }
        if count > max {
            return Err(Error::Prompt(format!(
                "{count} prompts exceed the plan's maximum of {max}"
            )));
        }
        let mut values: Vec<f32> = Vec::with_capacity(count * kind.points() * 3);
        match *self {
            Prompts::Boxes(boxes) => {
                for (i, b) in boxes.iter().enumerate() {
                    push_box(&mut values, i, b)?;
                }
            }
            Prompts::Points {
                coords,
                labels,
                per_prompt,
            } => {
                for (prompt, (points, labels)) in
                    prompt_points(coords, labels, per_prompt, count)?.enumerate()
                {
                    push_points(&mut values, prompt, points, labels)?;
                    // `_embed_points(pad=True)`: a padding point at (0, 0), label -1.
                    values.extend_from_slice(&[0.0, 0.0, label::PADDING]);
                }
            }
            Prompts::BoxesWithPoints {
                boxes,
                coords,
                labels,
                per_prompt,
            } => {
                if per_prompt == 0 {
                    return Err(Error::Prompt(
                        "boxes with 0 points per prompt: use Prompts::Boxes".into(),
                    ));
                }
                // `PromptEncoder.forward`: the points (pad=False, boxes are given), then the
                // box corners.
                for (prompt, (points, labels)) in
                    prompt_points(coords, labels, per_prompt, count)?.enumerate()
                {
                    push_points(&mut values, prompt, points, labels)?;
                    push_box(&mut values, prompt, &boxes[prompt])?;
                }
            }
        }
        let mut bytes = vec![0u8; PROMPT_HEADER_BYTES];
        bytes[..4].copy_from_slice(&(count as u32).to_le_bytes());
        bytes.extend_from_slice(bytemuck::cast_slice(&values));
        Ok(bytes)
    }
}

/// Appends a box's two corner tokens (label codes 2 and 3).
fn push_box(values: &mut Vec<f32>, i: usize, b: &[f32; 4]) -> Result<()> {
    if let Some(v) = b.iter().find(|v| !v.is_finite()) {
        return Err(Error::Prompt(format!("box {i} has coordinate {v}")));
    }
    values.extend_from_slice(&[b[0], b[1], label::BOX_TOP_LEFT]);
    values.extend_from_slice(&[b[2], b[3], label::BOX_BOTTOM_RIGHT]);
    Ok(())
}

/// The points and labels of each of `count` prompts of `per_prompt` points, after checking
/// that they make exactly that many whole prompts.
fn prompt_points<'a>(
    coords: &'a [[f32; 2]],
    labels: &'a [f32],
    per_prompt: usize,
    count: usize,
) -> Result<impl Iterator<Item = (&'a [[f32; 2]], &'a [f32])>> {
    if per_prompt == 0 || coords.len() != count * per_prompt || labels.len() != coords.len() {
        return Err(Error::Prompt(format!(
            "{} points and {} labels do not make {count} whole prompts of {per_prompt}",
            coords.len(),
            labels.len()
        )));
    }
    Ok(coords
        .chunks_exact(per_prompt)
        .zip(labels.chunks_exact(per_prompt)))
}

/// Appends one prompt's labelled points (labels 1, 0 or -1; finite coordinates).
fn push_points(
    values: &mut Vec<f32>,
    prompt: usize,
    points: &[[f32; 2]],
    labels: &[f32],
) -> Result<()> {
    for (j, (p, &l)) in points.iter().zip(labels).enumerate() {
        if !(p[0].is_finite() && p[1].is_finite()) {
            return Err(Error::Prompt(format!(
                "prompt {prompt} point {j} is ({}, {})",
                p[0], p[1]
            )));
        }
        if ![label::PADDING, label::NEGATIVE, label::POSITIVE].contains(&l) {
            return Err(Error::Prompt(format!(
                "prompt {prompt} point {j} has label {l} (expected 1, 0 or -1)"
            )));
        }
        values.extend_from_slice(&[p[0], p[1], l]);
    }
    Ok(())
}

/// Validates low-res mask inputs (`SamPredictor.predict`'s `mask_input`: a previous
/// prediction's low-res logits, `[count, 256, 256]` f32, one per prompt in order) for a plan
/// of at most `max` prompts and returns `count`. Typed [`Error::Prompt`] for none, a length that
/// is not whole masks, more than `max`, or a non-finite value (named by mask and pixel).
pub fn validate_mask_input(masks: &[f32], max: usize) -> Result<usize> {
    if masks.is_empty() || masks.len() % MASK_INPUT_PIXELS != 0 {
        return Err(Error::Prompt(format!(
            "mask input has {} values: expected a whole number (>= 1) of \
             {MASK_INPUT_SIDE} x {MASK_INPUT_SIDE} masks",
            masks.len()
        )));
    }
    let count = masks.len() / MASK_INPUT_PIXELS;
    if count > max {
        return Err(Error::Prompt(format!(
            "{count} mask inputs exceed the plan's maximum of {max} prompts"
        )));
    }
    if let Some(i) = masks.iter().position(|v| !v.is_finite()) {
        let (mask, pixel) = (i / MASK_INPUT_PIXELS, i % MASK_INPUT_PIXELS);
        return Err(Error::Prompt(format!(
            "mask input {mask} has value {} at row {}, column {}",
            masks[i],
            pixel / MASK_INPUT_SIDE,
            pixel % MASK_INPUT_SIDE
        )));
    }
    Ok(count)
}

/// `PositionEmbeddingRandom._pe_encoding` of one point given in [0, 1] coordinates (f64):
/// `[sin(2 pi t), cos(2 pi t)]` with `t = (2 p - 1) @ gauss`, `gauss` `[2, 128]`.
pub fn positional_encoding(gauss: &[f32], (x, y): (f64, f64)) -> [f64; SAM_DIM] {
    let mut out = [0f64; SAM_DIM];
    let (u, v) = (2.0 * x - 1.0, 2.0 * y - 1.0);
    for c in 0..PE_FREQS {
        let t = std::f64::consts::TAU * (u * gauss[c] as f64 + v * gauss[PE_FREQS + c] as f64);
        out[c] = t.sin();
        out[PE_FREQS + c] = t.cos();
    }
    out
}

/// `PromptEncoder.get_dense_pe()` as `[64 * 64, 256]` (pixel-major, the layout of the NHWC image
/// embedding): pixel (i, j) is encoded at ((j + 0.5) / 64, (i + 0.5) / 64).
pub fn dense_positional_encoding(gauss: &[f32]) -> Vec<f32> {
    let side = EMBED_SIDE as f64;
    let mut out = Vec::with_capacity(EMBED_SIDE * EMBED_SIDE * SAM_DIM);
    for i in 0..EMBED_SIDE {
        for j in 0..EMBED_SIDE {
            let pe = positional_encoding(gauss, ((j as f64 + 0.5) / side, (i as f64 + 0.5) / side));
            out.extend(pe.iter().map(|&v| v as f32));
        }
    }
    out
}
