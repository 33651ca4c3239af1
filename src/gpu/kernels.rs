//! The embedded kernel images (one fatbin per `kernels/*.cu`, built by build.rs) and the
//! functions loaded from them. Kernel names appear here and nowhere else; model code calls
//! the typed launchers in `crate::ops`.

use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};
use crate::ops::gemm::GemmTile;
use crate::ops::{conv, norm};

mod images {
    include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));
}

/// Every kernel function finesam launches.
pub struct Kernels {
    pub(crate) preprocess_frame: CudaFunction,
    pub(crate) assemble_packet_header: CudaFunction,
    // ---- dense ops (kernels/gemm.cu, conv.cu, norm.cu; launchers in crate::ops::{gemm, conv,
    // norm}) ----
    /// `gemm_<tile>`, indexed by `GemmTile::index`.
    pub(crate) gemm: [CudaFunction; GemmTile::COUNT],
    /// `conv_igemm_<tile>`, indexed by `GemmTile::index`.
    pub(crate) conv_igemm: [CudaFunction; GemmTile::COUNT],
    /// `depthwise_k<K>s<S>`, indexed by `conv::depthwise_index`.
    pub(crate) depthwise: [CudaFunction; conv::DEPTHWISE_VARIANTS.len()],
    pub(crate) conv3x3_stem_nchw: CudaFunction,
    /// `layer_norm_c<C>`, indexed by `norm::variant_index`.
    pub(crate) layer_norm: [CudaFunction; norm::LAYER_NORM_VARIANTS.len()],
    /// Streaming multiprocessors of the device (GEMM tile selection).
    pub(crate) sm_count: u32,
    // ---- end dense ops ----
}

impl Kernels {
    pub(crate) fn load(ctx: &Arc<CudaContext>) -> Result<Kernels> {
        let preprocess = load_module(ctx, "preprocess", images::PREPROCESS)?;
        let packet = load_module(ctx, "packet", images::PACKET)?;
        // ---- dense ops ----
        let gemm = load_module(ctx, "gemm", images::GEMM)?;
        let conv_module = load_module(ctx, "conv", images::CONV)?;
        let norm_module = load_module(ctx, "norm", images::NORM)?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(Error::cuda("querying the SM count"))?
            .max(1) as u32;
        let gemm_fns = functions(&gemm, "gemm", GemmTile::ALL.map(GemmTile::gemm_kernel))?;
        let conv_fns = functions(&gemm, "gemm", GemmTile::ALL.map(GemmTile::conv_kernel))?;
        // The large tiles need more than the default 48 KiB of dynamic shared memory.
        for (i, tile) in GemmTile::ALL.iter().enumerate() {
            set_dynamic_smem(&gemm_fns[i], tile.smem_bytes())?;
            set_dynamic_smem(&conv_fns[i], tile.smem_bytes())?;
        }
        let dense = (
            gemm_fns,
            conv_fns,
            functions(
                &conv_module,
                "conv",
                conv::DEPTHWISE_VARIANTS.map(|(_, _, name)| name),
            )?,
            function(&conv_module, "conv", "conv3x3_stem_nchw")?,
            functions(
                &norm_module,
                "norm",
                norm::LAYER_NORM_VARIANTS.map(|(_, name)| name),
            )?,
        );
        // ---- end dense ops ----
        Ok(Kernels {
            preprocess_frame: function(&preprocess, "preprocess", "preprocess_frame")?,
            assemble_packet_header: function(&packet, "packet", "assemble_packet_header")?,
            gemm: dense.0,
            conv_igemm: dense.1,
            depthwise: dense.2,
            conv3x3_stem_nchw: dense.3,
            layer_norm: dense.4,
            sm_count,
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

// ---- dense ops ----
impl Kernels {
    /// Streaming multiprocessors of the device, as the GEMM tile selection sees them.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }
}
// ---- end dense ops ----

fn functions<const N: usize>(
    module: &Arc<CudaModule>,
    file: &str,
    names: [&str; N],
) -> Result<[CudaFunction; N]> {
    let loaded = names
        .iter()
        .map(|name| function(module, file, name))
        .collect::<Result<Vec<_>>>()?;
    // Exactly N functions were loaded above, so the conversion cannot fail.
    loaded.try_into().map_err(|_| Error::Cuda {
        op: "loading a kernel function",
        message: format!("kernels/{file}.cu: wrong number of functions"),
    })
}

fn set_dynamic_smem(f: &CudaFunction, bytes: u32) -> Result<()> {
    f.set_attribute(
        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
    .map_err(Error::cuda("setting a kernel's dynamic shared memory"))
}

fn function(module: &Arc<CudaModule>, file: &str, name: &str) -> Result<CudaFunction> {
    module.load_function(name).map_err(|e| Error::Cuda {
        op: "loading a kernel function",
        message: format!("kernels/{file}.cu: {name}: {e}"),
    })
}
