//! Launchers for `kernels/mask.cu`: MobileSAM low-res mask logits -> bit-packed, cropped binary
//! masks at frame resolution, written into the result packet.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::launch_error;
use crate::error::Result;
use crate::gpu::{DevicePtr, Gpu};
use crate::packet::PacketLayout;

/// Side of MobileSAM's low-res mask logits.
pub const LOW_RES_SIDE: usize = 256;
/// Bytes of one low-res mask (fp32 logits).
pub const LOW_RES_MASK_BYTES: usize = LOW_RES_SIDE * LOW_RES_SIDE * 4;
/// Row slices of the low-res logits `mask_bounds` scans in parallel (kBoundSlices).
const BOUND_SLICES: u32 = 16;
/// Bytes of the per-mask bounds scratch (one `int4` box per row slice).
pub const BOUNDS_BYTES_PER_MASK: usize = 16 * BOUND_SLICES as usize;
/// Resident `mask_encode` blocks per SM (three fit its registers, `__launch_bounds__(256, 3)`):
/// the grid is one full wave, shared out by the kernel over the device-side mask count.
const ENCODE_BLOCKS_PER_SM: u32 = 3;
/// Dynamic shared memory of `mask_encode` (kEncodeSmemBytes in the kernel): a band's 8192
/// output words and 256 row-weight records.
pub(crate) const ENCODE_SMEM_BYTES: u32 = 8192 * 4 + 256 * 16;

/// Mirrors `MaskGeometry` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct MaskGeometry {
    mask_index_offset: u32,
    mask_data_offset: u32,
    mask_data_capacity: u32,
    masks_per_detection: u32,
    max_masks: u32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for MaskGeometry {}

/// Device buffers the mask decoder reads and writes.
#[derive(Debug, Clone, Copy)]
pub struct MaskDecodeIo {
    /// Low-res logits, `max_masks x 256 x 256` fp32.
    pub low_res: DevicePtr,
    /// Bytes available at `low_res`.
    pub low_res_bytes: usize,
    /// One u32: how many masks this frame produced (written by an earlier stage).
    pub mask_count: DevicePtr,
    /// The frame upload (its header gives frame size and SAM extent).
    pub upload: DevicePtr,
    /// Scratch, `max_masks x 16` bytes.
    pub bounds: DevicePtr,
    /// Bytes available at `bounds`.
    pub bounds_bytes: usize,
    /// The packet buffer (mask index and mask data sections are written).
    pub packet: DevicePtr,
    /// Bytes available at `packet`.
    pub packet_bytes: usize,
    /// The four packet counters (`[detections, masks, mask bytes, flags]`); masks, mask bytes
    /// and the truncation flag are written, so they must be zeroed once per frame before.
    pub counts: DevicePtr,
}

/// How the masks relate to the detections and where the threshold lies.
#[derive(Debug, Clone, Copy)]
pub struct MaskDecodeParams {
    /// Masks each detection has (1, or 3 for multimask output); mask k belongs to detection
    /// `k / masks_per_detection`.
    pub masks_per_detection: u32,
    /// Most masks a frame can produce (sizes the grid and the scratch).
    pub max_masks: u32,
    /// Logit threshold (`Sam.mask_threshold`, 0.0).
    pub threshold: f32,
}

/// Launches the three mask kernels (bounds, layout, encode) on the stream; the mask records'
/// `quality` is NaN.
pub fn launch_mask_decode(
    gpu: &Gpu,
    io: &MaskDecodeIo,
    layout: &PacketLayout,
    params: &MaskDecodeParams,
) -> Result<()> {
    launch_mask_decode_with_quality(gpu, io, layout, params, None)
}

/// As [`launch_mask_decode`], copying each mask's predicted IoU from `quality` (one f32 per
/// mask, `max_masks` of them) into its record.
pub fn launch_mask_decode_with_quality(
    gpu: &Gpu,
    io: &MaskDecodeIo,
    layout: &PacketLayout,
    params: &MaskDecodeParams,
    quality: Option<DevicePtr>,
) -> Result<()> {
    let quality: DevicePtr = quality.unwrap_or(0);
    let max = params.max_masks as usize;
    let problem = if params.masks_per_detection == 0 {
        Some("masks_per_detection must be at least 1".to_string())
    } else if max == 0 || max > layout.detection_capacity as usize {
        Some(format!(
            "max_masks {max} must be 1..={} (the packet's mask index capacity)",
            layout.detection_capacity
        ))
    } else if io.low_res_bytes < max * LOW_RES_MASK_BYTES {
        Some(format!(
            "low-res logits have {} bytes, {max} masks need {}",
            io.low_res_bytes,
            max * LOW_RES_MASK_BYTES
        ))
    } else if io.bounds_bytes < max * BOUNDS_BYTES_PER_MASK {
        Some(format!("bounds scratch has {} bytes", io.bounds_bytes))
    } else if io.packet_bytes < layout.total_bytes() {
        Some(format!(
            "packet buffer has {} bytes, layout needs {}",
            io.packet_bytes,
            layout.total_bytes()
        ))
    } else if !params.threshold.is_finite() {
        Some(format!("threshold {} is not finite", params.threshold))
    } else {
        None
    };
    if let Some(message) = problem {
        return Err(launch_error("mask_decode", message));
    }
    let geometry = MaskGeometry {
        mask_index_offset: layout.mask_index_offset() as u32,
        mask_data_offset: layout.mask_data_offset() as u32,
        mask_data_capacity: layout.mask_data_capacity,
        masks_per_detection: params.masks_per_detection,
        max_masks: params.max_masks,
    };
    let stream = gpu.stream();
    let kernels = gpu.kernels();

    let mut bounds = stream.launch_builder(&kernels.mask_bounds);
    bounds
        .arg(&io.low_res)
        .arg(&io.mask_count)
        .arg(&params.threshold)
        .arg(&io.bounds);
    let cfg = LaunchConfig {
        grid_dim: (BOUND_SLICES, params.max_masks, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument order and types match `mask_bounds`; sizes checked above.
    unsafe { bounds.launch(cfg) }.map_err(|e| launch_error("mask_bounds", e.to_string()))?;

    let mut records = stream.launch_builder(&kernels.mask_layout);
    records
        .arg(&io.bounds)
        .arg(&io.mask_count)
        .arg(&io.upload)
        .arg(&quality)
        .arg(&io.packet)
        .arg(&geometry)
        .arg(&io.counts);
    let one = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument order and types match `mask_layout`.
    unsafe { records.launch(one) }.map_err(|e| launch_error("mask_layout", e.to_string()))?;

    let mut encode = stream.launch_builder(&kernels.mask_encode);
    encode
        .arg(&io.low_res)
        .arg(&io.mask_count)
        .arg(&io.upload)
        .arg(&params.threshold)
        .arg(&io.packet)
        .arg(&geometry);
    // One wave of blocks, whatever the mask count (the kernel divides them among the masks the
    // decoder produced; a full-frame mask has hundreds of bands).
    let cfg = LaunchConfig {
        grid_dim: (kernels.sm_count() * ENCODE_BLOCKS_PER_SM, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: ENCODE_SMEM_BYTES,
    };
    // SAFETY: argument order and types match `mask_encode`.
    unsafe { encode.launch(cfg) }.map_err(|e| launch_error("mask_encode", e.to_string()))?;
    Ok(())
}
