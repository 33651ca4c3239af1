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
