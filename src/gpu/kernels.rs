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
    pub(crate) mask_bounds: CudaFunction,
    pub(crate) mask_layout: CudaFunction,
    pub(crate) mask_encode: CudaFunction,
}

impl Kernels {
    pub(crate) fn load(ctx: &Arc<CudaContext>) -> Result<Kernels> {
        let preprocess = load_module(ctx, "preprocess", images::PREPROCESS)?;
        let packet = load_module(ctx, "packet", images::PACKET)?;
        let mask = load_module(ctx, "mask", images::MASK)?;
        Ok(Kernels {
            preprocess_frame: function(&preprocess, "preprocess", "preprocess_frame")?,
            assemble_packet_header: function(&packet, "packet", "assemble_packet_header")?,
            mask_bounds: function(&mask, "mask", "mask_bounds")?,
            mask_layout: function(&mask, "mask", "mask_layout")?,
            mask_encode: function(&mask, "mask", "mask_encode")?,
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
