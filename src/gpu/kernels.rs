//! The embedded kernel images (one fatbin per `kernels/*.cu`, built by build.rs) and the
//! functions loaded from them. Kernel names appear here and nowhere else; model code calls
//! the typed launchers in `crate::ops`.

use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};
use crate::ops::gemm::GemmTile;
use crate::ops::{conv, norm, sam_cross_attention, sam_folded_t2i, sam_heads, sam_tokens, tinyvit};

mod images {
    include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));
}

/// Every kernel function finesam launches.
pub struct Kernels {
    pub(crate) preprocess_frame: CudaFunction,
    pub(crate) assemble_packet_header: CudaFunction,
    pub(crate) prompt_detections: CudaFunction,
    pub(crate) mask_bounds: CudaFunction,
    pub(crate) mask_layout: CudaFunction,
    pub(crate) mask_encode: CudaFunction,
    /// `gemm_<tile>`, indexed by `GemmTile::index`.
    pub(crate) gemm: [CudaFunction; GemmTile::COUNT],
    /// `gemm_splitk_<tile>`, indexed by `GemmTile::index`.
    pub(crate) gemm_splitk: [CudaFunction; GemmTile::COUNT],
    /// `conv_igemm_<tile>`, indexed by `GemmTile::index`.
    pub(crate) conv_igemm: [CudaFunction; GemmTile::COUNT],
    /// `depthwise_k<K>s<S>`, indexed by `conv::depthwise_index`.
    pub(crate) depthwise: [CudaFunction; conv::DEPTHWISE_VARIANTS.len()],
    pub(crate) conv3x3_stem_nchw: CudaFunction,
    /// `layer_norm_c<C>`, indexed by `norm::variant_index`.
    pub(crate) layer_norm: [CudaFunction; norm::LAYER_NORM_VARIANTS.len()],
    pub(crate) attention_d16: CudaFunction,
    pub(crate) attention_d32: CudaFunction,
    pub(crate) attention_d64: CudaFunction,
    pub(crate) attention_split_d16: CudaFunction,
    pub(crate) attention_split_d32: CudaFunction,
    pub(crate) attention_split_d64: CudaFunction,
    pub(crate) mbconv_c64_e4: CudaFunction,
    pub(crate) patch_merging_c64_c128: CudaFunction,
    /// `tinyvit_mlp_c<C>`, indexed like `tinyvit::MLP_CHANNELS`.
    pub(crate) tinyvit_mlp: [CudaFunction; tinyvit::MLPS.len()],
    pub(crate) window_partition: CudaFunction,
    pub(crate) window_unpartition: CudaFunction,
    pub(crate) assign_solve: CudaFunction,
    /// `assign_solve` for blocks of up to 512 threads with the sparse path compiled in.
    pub(crate) assign_solve_512: CudaFunction,
    pub(crate) matcher_cost: CudaFunction,
    pub(crate) matcher_mask_rows: CudaFunction,
    pub(crate) tracker_cost: CudaFunction,
    pub(crate) tracker_update: CudaFunction,
    pub(crate) sam_prompt_encode: CudaFunction,
    pub(crate) sam_upscale_masks: CudaFunction,
    pub(crate) sam_image_to_token: CudaFunction,
    /// `sam_convt1_ln_gelu` (200 KB of dynamic shared memory: sm_90 only).
    pub(crate) sam_convt1_ln_gelu: CudaFunction,
    pub(crate) sam_folded_image_to_token: CudaFunction,
    pub(crate) sam_mask_embed: CudaFunction,
    pub(crate) sam_token_linear_ln: CudaFunction,
    /// `sam_token_mlp_<rows>`, indexed like `sam_tokens::TOKEN_MLP_TILES`.
    pub(crate) sam_token_mlp: [CudaFunction; sam_tokens::TOKEN_MLP_TILES.len()],
    pub(crate) sam_token_mlp_norm: CudaFunction,
    pub(crate) sam_head_fold: CudaFunction,
    /// `sam_cross_attention_q<tiles>`, indexed like `sam_cross_attention::CROSS_ATTENTION_VARIANTS`.
    pub(crate) sam_cross_attention:
        [CudaFunction; sam_cross_attention::CROSS_ATTENTION_VARIANTS.len()],
    pub(crate) sam_heads: CudaFunction,
    /// `sam_folded_t2i` (160 KB of dynamic shared memory: sm_90 only).
    pub(crate) sam_folded_t2i: CudaFunction,
    /// Shared memory a block may opt in to (bytes): which token MLP tiles can run.
    pub(crate) smem_per_block_optin: usize,
    /// Streaming multiprocessors of the device (GEMM tile selection).
    pub(crate) sm_count: u32,
    /// Resident blocks per SM of each `gemm_<tile>` (driver occupancy; GEMM tile selection).
    pub(crate) gemm_blocks_per_sm: [u32; GemmTile::COUNT],
    /// Dynamic shared memory `assign_solve` may use per block (the device's opt-in limit less
    /// the kernel's static shared memory); the attribute is set to it at load.
    pub(crate) assign_smem_limit: usize,
}

impl Kernels {
    pub(crate) fn load(ctx: &Arc<CudaContext>) -> Result<Kernels> {
        let optin = ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(Error::cuda("querying the shared-memory limit"))?;
        let set_dynamic_smem = |f: &CudaFunction, bytes: u32| set_dynamic_smem(f, bytes, optin);
        let preprocess = load_module(ctx, "preprocess", images::PREPROCESS)?;
        let packet = load_module(ctx, "packet", images::PACKET)?;
        let mask = load_module(ctx, "mask", images::MASK)?;
        let mask_encode = function(&mask, "mask", "mask_encode")?;
        set_dynamic_smem(&mask_encode, crate::ops::mask::ENCODE_SMEM_BYTES)?;
        let gemm = load_module(ctx, "gemm", images::GEMM)?;
        let conv_module = load_module(ctx, "conv", images::CONV)?;
        let norm_module = load_module(ctx, "norm", images::NORM)?;
        let attention = load_module(ctx, "attention", images::ATTENTION)?;
        let window = load_module(ctx, "window", images::WINDOW)?;
        let tinyvit_module = load_module(ctx, "tinyvit", images::TINYVIT)?;
        let block = |b: tinyvit::ConvBlock| -> Result<CudaFunction> {
            let f = function(&tinyvit_module, "tinyvit", b.kernel)?;
            set_dynamic_smem(&f, b.smem_bytes)?;
            Ok(f)
        };
        let mbconv_c64_e4 = block(tinyvit::MBCONV)?;
        let patch_merging_c64_c128 = block(tinyvit::PATCH_MERGING)?;
        let tinyvit_mlp = functions(&tinyvit_module, "tinyvit", tinyvit::MLPS.map(|m| m.kernel))?;
        for (f, m) in tinyvit_mlp.iter().zip(tinyvit::MLPS) {
            set_dynamic_smem(f, m.smem_bytes)?;
        }
        let attn = |name| function(&attention, "attention", name);
        let assign = load_module(ctx, "assign", images::ASSIGN)?;
        let sam = load_module(ctx, "sam_decoder", images::SAM_DECODER)?;
        let sam_image_to_token = function(&sam, "sam_decoder", "sam_image_to_token")?;
        let sam_upscale_masks = function(&sam, "sam_decoder", "sam_upscale_masks")?;
        set_dynamic_smem(
            &sam_upscale_masks,
            crate::ops::sam_decoder::UPSCALE_SMEM_BYTES,
        )?;
        let sam_convt1_ln_gelu = function(&sam, "sam_decoder", "sam_convt1_ln_gelu")?;
        set_dynamic_smem(
            &sam_convt1_ln_gelu,
            crate::ops::sam_decoder::CONVT1_SMEM_BYTES,
        )?;
        set_dynamic_smem(
            &sam_image_to_token,
            crate::ops::sam_decoder::image_to_token_smem_bytes(crate::ops::sam_decoder::MAX_TOKENS),
        )?;
        let folded = load_module(ctx, "sam_folded_i2t", images::SAM_FOLDED_I2T)?;
        let sam_folded_image_to_token =
            function(&folded, "sam_folded_i2t", "sam_folded_image_to_token")?;
        set_dynamic_smem(
            &sam_folded_image_to_token,
            crate::ops::sam_folded_i2t::FOLDED_I2T_SMEM_BYTES,
        )?;
        let tokens = load_module(ctx, "sam_tokens", images::SAM_TOKENS)?;
        let sam_token_linear_ln = function(&tokens, "sam_tokens", "sam_token_linear_ln")?;
        set_dynamic_smem(&sam_token_linear_ln, sam_tokens::TOKEN_LINEAR_SMEM_BYTES)?;
        let sam_token_mlp = functions(
            &tokens,
            "sam_tokens",
            sam_tokens::TOKEN_MLP_TILES.map(|t| t.kernel),
        )?;
        for (f, t) in sam_token_mlp.iter().zip(sam_tokens::TOKEN_MLP_TILES) {
            set_dynamic_smem(f, t.smem_bytes)?;
        }
        let cross = load_module(ctx, "sam_cross_attention", images::SAM_CROSS_ATTENTION)?;
        let sam_cross_attention = functions(
            &cross,
            "sam_cross_attention",
            sam_cross_attention::CROSS_ATTENTION_VARIANTS.map(|(name, _)| name),
        )?;
        for (f, (_, bytes)) in sam_cross_attention
            .iter()
            .zip(sam_cross_attention::CROSS_ATTENTION_VARIANTS)
        {
            set_dynamic_smem(f, bytes)?;
        }
        let heads = load_module(ctx, "sam_heads", images::SAM_HEADS)?;
        let sam_heads = function(&heads, "sam_heads", "sam_heads")?;
        set_dynamic_smem(&sam_heads, sam_heads::HEADS_SMEM_BYTES)?;
        let folded = load_module(ctx, "sam_folded_t2i", images::SAM_FOLDED_T2I)?;
        let sam_folded_t2i = function(&folded, "sam_folded_t2i", "sam_folded_t2i")?;
        set_dynamic_smem(&sam_folded_t2i, sam_folded_t2i::FOLDED_T2I_SMEM_BYTES)?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(Error::cuda("querying the SM count"))?
            .max(1) as u32;
        let gemm_fns = functions(&gemm, "gemm", GemmTile::ALL.map(GemmTile::gemm_kernel))?;
        let conv_fns = functions(&gemm, "gemm", GemmTile::ALL.map(GemmTile::conv_kernel))?;
        let splitk_fns = functions(&gemm, "gemm", GemmTile::ALL.map(GemmTile::splitk_kernel))?;
        // The large tiles need more than the default 48 KiB of dynamic shared memory.
        let mut gemm_blocks_per_sm = crate::ops::gemm::DEFAULT_BLOCKS_PER_SM;
        for (i, tile) in GemmTile::ALL.iter().enumerate() {
            set_dynamic_smem(&gemm_fns[i], tile.smem_bytes())?;
            set_dynamic_smem(&conv_fns[i], tile.smem_bytes())?;
            set_dynamic_smem(&splitk_fns[i], tile.smem_bytes())?;
            // A failed query keeps the sm_90 value (selection only, never correctness).
            if let Ok(blocks) = gemm_fns[i].occupancy_max_active_blocks_per_multiprocessor(
                tile.threads(),
                tile.smem_bytes() as usize,
                None,
            ) {
                gemm_blocks_per_sm[i] = blocks.max(1);
            }
        }
        // The two entries share one body; the sparse path's state makes the static shared
        // memory of assign_solve_512 a little larger, and one limit serves both.
        let assign_solve = function(&assign, "assign", "assign_solve")?;
        let assign_solve_512 = function(&assign, "assign", "assign_solve_512")?;
        let mut assign_static = 0;
        for f in [&assign_solve, &assign_solve_512] {
            let bytes = f
                .shared_size_bytes()
                .map_err(Error::cuda("querying assign_solve's shared memory"))?;
            assign_static = assign_static.max(bytes);
        }
        let assign_smem_limit = (optin - assign_static).max(0) as u32;
        set_dynamic_smem(&assign_solve, assign_smem_limit)?;
        set_dynamic_smem(&assign_solve_512, assign_smem_limit)?;
        Ok(Kernels {
            preprocess_frame: function(&preprocess, "preprocess", "preprocess_frame")?,
            assemble_packet_header: function(&packet, "packet", "assemble_packet_header")?,
            prompt_detections: function(&packet, "packet", "prompt_detections")?,
            mask_bounds: function(&mask, "mask", "mask_bounds")?,
            mask_layout: function(&mask, "mask", "mask_layout")?,
            mask_encode,
            gemm: gemm_fns,
            gemm_splitk: splitk_fns,
            conv_igemm: conv_fns,
            depthwise: functions(
                &conv_module,
                "conv",
                conv::DEPTHWISE_VARIANTS.map(|(_, _, name)| name),
            )?,
            conv3x3_stem_nchw: function(&conv_module, "conv", "conv3x3_stem_nchw")?,
            layer_norm: functions(
                &norm_module,
                "norm",
                norm::LAYER_NORM_VARIANTS.map(|(_, name)| name),
            )?,
            attention_d16: attn("attention_d16")?,
            attention_d32: attn("attention_d32")?,
            attention_d64: attn("attention_d64")?,
            attention_split_d16: attn("attention_split_d16")?,
            attention_split_d32: attn("attention_split_d32")?,
            attention_split_d64: attn("attention_split_d64")?,
            mbconv_c64_e4,
            patch_merging_c64_c128,
            tinyvit_mlp,
            window_partition: function(&window, "window", "window_partition")?,
            window_unpartition: function(&window, "window", "window_unpartition")?,
            assign_solve,
            assign_solve_512,
            matcher_cost: function(&assign, "assign", "matcher_cost")?,
            matcher_mask_rows: function(&assign, "assign", "matcher_mask_rows")?,
            tracker_cost: function(&assign, "assign", "tracker_cost")?,
            tracker_update: function(&assign, "assign", "tracker_update")?,
            sam_prompt_encode: function(&sam, "sam_decoder", "sam_prompt_encode")?,
            sam_upscale_masks,
            sam_image_to_token,
            sam_convt1_ln_gelu,
            sam_folded_image_to_token,
            sam_mask_embed: function(&sam, "sam_decoder", "sam_mask_embed")?,
            sam_token_linear_ln,
            sam_token_mlp,
            sam_token_mlp_norm: function(&tokens, "sam_tokens", "sam_token_mlp_norm")?,
            sam_head_fold: function(&tokens, "sam_tokens", "sam_head_fold")?,
            sam_cross_attention,
            sam_heads,
            sam_folded_t2i,
            smem_per_block_optin: optin.max(0) as usize,
            sm_count,
            gemm_blocks_per_sm,
            assign_smem_limit: assign_smem_limit as usize,
        })
    }

    /// Streaming multiprocessors of the device, as the GEMM tile selection sees them.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// Shared memory (bytes) a block may opt in to on this device.
    pub fn smem_per_block_optin(&self) -> usize {
        self.smem_per_block_optin
    }

    /// Resident blocks per SM of each GEMM tile (indexed by `GemmTile::index`).
    pub fn gemm_blocks_per_sm(&self) -> [u32; GemmTile::COUNT] {
        self.gemm_blocks_per_sm
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

/// Lets `f` take `bytes` of dynamic shared memory. A kernel that needs more than the GPU offers
/// a block (`optin`: 227 KiB on sm_90, 163 KiB on sm_80, 99 KiB on sm_86/sm_89) is left at the
/// default, so the rest of the library still loads; launching it then fails with a typed
/// launch error naming the kernel.
fn set_dynamic_smem(f: &CudaFunction, bytes: u32, optin: i32) -> Result<()> {
    let static_bytes = f
        .shared_size_bytes()
        .map_err(Error::cuda("querying a kernel's static shared memory"))?;
    if i64::from(bytes) + i64::from(static_bytes) > i64::from(optin) {
        return Ok(());
    }
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
