//! The embedded kernel images (one fatbin per `kernels/*.cu`, built by build.rs) and the
//! functions loaded from them. Kernel names appear here and nowhere else; model code calls
//! the typed launchers in `crate::ops`.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};

mod images {
    include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));
}

/// Every kernel function finesam launches.
pub struct Kernels {
    pub(crate) preprocess_frame: CudaFunction,
    pub(crate) assemble_packet_header: CudaFunction,
    // --- attention (kernels/attention.cu, kernels/window.cu; launchers in ops::attention,
    // ops::window) ---
    pub(crate) attention_d16: CudaFunction,
    pub(crate) attention_d32: CudaFunction,
    pub(crate) attention_d64: CudaFunction,
    pub(crate) attention_split_d16: CudaFunction,
    pub(crate) attention_split_d32: CudaFunction,
    pub(crate) attention_split_d64: CudaFunction,
    pub(crate) window_partition: CudaFunction,
    pub(crate) window_unpartition: CudaFunction,
    // --- end attention ---
}

impl Kernels {
    pub(crate) fn load(ctx: &Arc<CudaContext>) -> Result<Kernels> {
        let preprocess = load_module(ctx, "preprocess", images::PREPROCESS)?;
        let packet = load_module(ctx, "packet", images::PACKET)?;
        // --- attention ---
        let attention = load_module(ctx, "attention", images::ATTENTION)?;
        let window = load_module(ctx, "window", images::WINDOW)?;
        let attn = |name| function(&attention, "attention", name);
        // --- end attention ---
        Ok(Kernels {
            preprocess_frame: function(&preprocess, "preprocess", "preprocess_frame")?,
            assemble_packet_header: function(&packet, "packet", "assemble_packet_header")?,
            // --- attention ---
            attention_d16: attn("attention_d16")?,
            attention_d32: attn("attention_d32")?,
            attention_d64: attn("attention_d64")?,
            attention_split_d16: attn("attention_split_d16")?,
            attention_split_d32: attn("attention_split_d32")?,
            attention_split_d64: attn("attention_split_d64")?,
            window_partition: function(&window, "window", "window_partition")?,
            window_unpartition: function(&window, "window", "window_unpartition")?,
            // --- end attention ---
        })
    }
}

fn load_module(ctx: &Arc<CudaContext>, file: &str, image: &[u8]) -> Result<Arc<CudaModule>> {
    ctx.load_module(Ptx::from_binary(image.to_vec()))
        .map_err(|e| Error::Cuda {
            op: "loading a kernel module",
            message: format!(
                "kernels/{file}.cu: {e} (the fatbin has no code for this GPU; rebuild with \
                 FINESAM_CUDA_ARCHS including its compute capability)"
            ),
        })
}

fn function(module: &Arc<CudaModule>, file: &str, name: &str) -> Result<CudaFunction> {
    module.load_function(name).map_err(|e| Error::Cuda {
        op: "loading a kernel function",
        message: format!("kernels/{file}.cu: {name}: {e}"),
    })
}
