//! Launcher for `kernels/packet.cu`: writes the packet header on the device.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use crate::error::{Error, Result};
use crate::gpu::{DevicePtr, Gpu};
use crate::packet::PacketLayout;

/// Mirrors `PacketGeometry` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct PacketGeometry {
    total_bytes: u32,
    detection_capacity: u32,
    detections_offset: u32,
    mask_index_offset: u32,
    mask_data_offset: u32,
    mask_data_capacity: u32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for PacketGeometry {}

/// Launches `assemble_packet_header`. `counts` points at four u32 (detections, masks, mask
/// bytes, flags) written by earlier stages, or is `None` while no stage produces them.
pub fn launch_assemble_packet_header(
    gpu: &Gpu,
    upload: DevicePtr,
    counts: Option<DevicePtr>,
    packet: DevicePtr,
    packet_bytes: usize,
    layout: &PacketLayout,
) -> Result<()> {
    let total = layout.total_bytes();
    if packet_bytes < total || total > u32::MAX as usize {
        return Err(Error::Launch {
            kernel: "assemble_packet_header",
            message: format!("packet buffer has {packet_bytes} bytes, layout needs {total}"),
        });
    }
    let geometry = PacketGeometry {
        total_bytes: total as u32,
        detection_capacity: layout.detection_capacity,
        detections_offset: layout.detections_offset() as u32,
        mask_index_offset: layout.mask_index_offset() as u32,
        mask_data_offset: layout.mask_data_offset() as u32,
        mask_data_capacity: layout.mask_data_capacity,
    };
    let counts: DevicePtr = counts.unwrap_or(0);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    let stream = gpu.stream();
    let mut launch = stream.launch_builder(&gpu.kernels().assemble_packet_header);
    launch.arg(&upload).arg(&counts).arg(&packet).arg(&geometry);
    // SAFETY: argument order and types match the kernel signature; sizes checked above.
    unsafe { launch.launch(cfg) }.map_err(|e| Error::Launch {
        kernel: "assemble_packet_header",
        message: e.to_string(),
    })?;
    Ok(())
}

/// Mirrors `PromptDetectionParams` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct PromptDetectionParams {
    points_per_prompt: u32,
    masks_per_prompt: u32,
    max_prompts: u32,
    detections_offset: u32,
    detection_capacity: u32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for PromptDetectionParams {}

/// What `launch_prompt_detections` reads: a MobileSAM prompt block and its IoU predictions.
#[derive(Debug, Clone, Copy)]
pub struct PromptDetectionsIo {
    /// The prompt block (u32 count, then `[max_prompts, points_per_prompt, 3]` f32 from byte 16).
    pub prompt_block: DevicePtr,
    /// Bytes available at `prompt_block`.
    pub prompt_block_bytes: usize,
    /// Points per prompt in the block (padding included).
    pub points_per_prompt: u32,
    /// Most prompts the block holds.
    pub max_prompts: u32,
    /// IoU predictions `[max_prompts, masks_per_prompt]` f32.
    pub iou: DevicePtr,
    /// Masks per prompt (1, or 3 with multimask).
    pub masks_per_prompt: u32,
}

/// Writes one detection record per prompt into the packet's detection table (box = extent of
/// the prompt's points, mask quality = best predicted IoU) and counts[0].
pub fn launch_prompt_detections(
    gpu: &Gpu,
    io: &PromptDetectionsIo,
    packet: DevicePtr,
    packet_bytes: usize,
    counts: DevicePtr,
    layout: &PacketLayout,
) -> Result<()> {
    let need = 16 + io.max_prompts as usize * io.points_per_prompt as usize * 12;
    let problem = if io.prompt_block_bytes < need {
        Some(format!(
            "prompt block has {} bytes, {need} needed",
            io.prompt_block_bytes
        ))
    } else if packet_bytes < layout.total_bytes() {
        Some(format!(
            "packet buffer has {packet_bytes} bytes, layout needs {}",
            layout.total_bytes()
        ))
    } else if io.masks_per_prompt == 0 || io.points_per_prompt == 0 {
        Some("a prompt needs at least one point and one mask".into())
    } else {
        None
    };
    if let Some(message) = problem {
        return Err(Error::Launch {
            kernel: "prompt_detections",
            message,
        });
    }
    let params = PromptDetectionParams {
        points_per_prompt: io.points_per_prompt,
        masks_per_prompt: io.masks_per_prompt,
        max_prompts: io.max_prompts,
        detections_offset: layout.detections_offset() as u32,
        detection_capacity: layout.detection_capacity,
    };
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let stream = gpu.stream();
    let mut launch = stream.launch_builder(&gpu.kernels().prompt_detections);
    launch
        .arg(&io.prompt_block)
        .arg(&io.iou)
        .arg(&packet)
        .arg(&counts)
        .arg(&params);
    // SAFETY: argument order and types match the kernel; sizes checked above.
    unsafe { launch.launch(cfg) }.map_err(|e| Error::Launch {
        kernel: "prompt_detections",
        message: e.to_string(),
    })?;
    Ok(())
}
