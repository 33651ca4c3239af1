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
    // --- assignment: kernels/assign.cu, launched from src/assign ---
    pub(crate) assign_solve: CudaFunction,
    pub(crate) matcher_cost: CudaFunction,
    pub(crate) matcher_mask_rows: CudaFunction,
    pub(crate) tracker_cost: CudaFunction,
    pub(crate) tracker_update: CudaFunction,
    // --- end assignment ---
}

impl Kernels {
    pub(crate) fn load(ctx: &Arc<CudaContext>) -> Result<Kernels> {
        let preprocess = load_module(ctx, "preprocess", images::PREPROCESS)?;
        let packet = load_module(ctx, "packet", images::PACKET)?;
        let assign = load_module(ctx, "assign", images::ASSIGN)?;
        Ok(Kernels {
            preprocess_frame: function(&preprocess, "preprocess", "preprocess_frame")?,
            assemble_packet_header: function(&packet, "packet", "assemble_packet_header")?,
            assign_solve: function(&assign, "assign", "assign_solve")?,
            matcher_cost: function(&assign, "assign", "matcher_cost")?,
            matcher_mask_rows: function(&assign, "assign", "matcher_mask_rows")?,
            tracker_cost: function(&assign, "assign", "tracker_cost")?,
            tracker_update: function(&assign, "assign", "tracker_update")?,
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
