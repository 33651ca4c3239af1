//! MobileSAM's image encoder: TinyViT-5M (`vit_t`) and the SAM neck, 1024x1024 -> 256x64x64,
//! matching `TinyViT.forward` of the official `tiny_vit_sam.py` (eval mode).
//!
//! Loading walks the official module tree once: every tensor is checked by its official name
//! and shape, BatchNorms are folded into their convolutions, layouts converted, attention
//! biases expanded into the kernel's fragment order, and each layer becomes launches of the
//! typed kernels in [`crate::ops`] on NHWC fp16 activations. The launches form a flat plan; its
//! tensors get offsets in one arena by liveness. [`ImageEncoder::encode`] then only issues
//! those launches (no allocation, no host sync), so it can be captured into a CUDA graph.
//!
//! Layer by layer (H x W tokens, C channels; `[L, C]` = NHWC = the official token layout):
//! - patch_embed: 3x3 s2 conv (3 -> 32, stem kernel on the NCHW input) + GELU, 3x3 s2 conv
//!   (32 -> 64): 256x256x64.
//! - layers.0: 2 MBConv (1x1 64 -> 256 + GELU, depthwise 3x3 + GELU, 1x1 256 -> 64, + input,
//!   GELU), PatchMerging to 128x128x128.
//! - layers.1..3: TinyViT blocks (window partition with zero padding, LayerNorm, qkv, attention
//!   with the relative-position bias, proj, crop + residual; depthwise 3x3 local conv; LayerNorm,
//!   fc1 + GELU, fc2 + residual: one fused launch at 128 and 160 channels, two GEMMs at 320),
//!   PatchMerging after layers.1 (-> 64x64x160) and layers.2 (stride 1, -> 64x64x320).
//! - neck: 1x1 conv 320 -> 256, LayerNorm2d, 3x3 conv 256 -> 256, LayerNorm2d.

use half::f16;

use crate::error::{Error, Result};
use crate::gpu::{Arena, ArenaPlanner, DeviceBuffer, Gpu, Graph, TensorId};
use crate::ops::attention::{
    attention_flops, fragment_bias, launch_attention, plan_attention, tinyvit_dense_bias,
    Attention, AttentionBias, AttentionWorkspace, BiasDtype, HeadsTensor, WorkspaceNeed,
};
use crate::ops::conv::{
    conv_weight_ohwi, depthwise_weight_taps, fold_batchnorm, launch_conv2d, launch_conv3x3_stem,
    launch_depthwise_conv2d, BatchNorm, Conv2dShape, ConvArgs, DepthwiseShape, DirectConvArgs,
};
use crate::ops::gemm::{
    launch_gemm, launch_gemm_window_scatter, Activation, Epilogue, GemmArgs, GemmProblem, Matrix,
};
use crate::ops::gemm::{Residual, ResidualOrder};
use crate::ops::norm::{
    launch_depthwise_layer_norm, launch_layer_norm, launch_window_layer_norm, DepthwisePrologue,
    LayerNormArgs,
};
use crate::ops::tinyvit::{
    has_fused_mlp, launch_mbconv, launch_patch_merging_c64, launch_tinyvit_mlp, mbconv_flops,
    patch_merging_c64_flops, tinyvit_mlp_flops, ConvBlockArgs, ConvBlockShape, MlpArgs, MlpShape,
    MBCONV_CHANNELS, MBCONV_HIDDEN, PATCH_MERGING_IN, PATCH_MERGING_OUT,
};
use crate::ops::window::WindowGeometry;
use crate::ops::DeviceRegion;
use crate::weights::WeightsFile;

/// Side of the square input image.
pub const IMAGE_SIZE: usize = 1024;
/// Bytes of the fp16 NCHW `[1, 3, 1024, 1024]` input.
pub const INPUT_BYTES: usize = 3 * IMAGE_SIZE * IMAGE_SIZE * 2;
/// Channels of the image embedding.
pub const EMBED_CHANNELS: usize = 256;
/// Side of the image embedding.
pub const EMBED_SIZE: usize = 64;

// vit_t (build_sam.py): TinyViT(img_size=1024, embed_dims=[64, 128, 160, 320],
// depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4,
// mbconv_expand_ratio=4, local_conv_size=3).
const DIMS: [usize; 4] = [64, 128, 160, 320];
const DEPTHS: [usize; 4] = [2, 2, 6, 2];
const HEADS: [usize; 4] = [0, 4, 5, 10];
const WINDOWS: [usize; 4] = [0, 7, 14, 7];
/// Token grid side entering each layer (256 // 2**(i-1 if i == 3 else i)).
const RESOLUTIONS: [usize; 4] = [256, 128, 64, 64];
const EXPAND: usize = 4;
const HEAD_DIM: usize = 32;
/// nn.BatchNorm2d and nn.LayerNorm default eps; LayerNorm2d in the neck uses 1e-6.
const BN_EPS: f32 = 1e-5;
const LN_EPS: f32 = 1e-5;
const LN2D_EPS: f32 = 1e-6;
const HALF: usize = 2;

/// Where the encoder's stages end: the official module whose output each stage reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncoderStage {
    /// `patch_embed`: `[64, 256, 256]` NCHW in the official code.
    PatchEmbed,
    /// `layers.0` (MBConvs + PatchMerging): tokens `[16384, 128]`.
    Layer0,
    /// `layers.1` (+ PatchMerging): tokens `[4096, 160]`.
    Layer1,
    /// `layers.2` (+ PatchMerging, stride 1): tokens `[4096, 320]`.
    Layer2,
    /// `layers.3`: tokens `[4096, 320]`.
    Layer3,
    /// The neck: the image embedding, `[256, 64, 64]` NCHW in the official code.
    Neck,
}

impl EncoderStage {
    /// Every stage, in execution order.
    pub const ALL: [EncoderStage; 6] = [
        EncoderStage::PatchEmbed,
        EncoderStage::Layer0,
        EncoderStage::Layer1,
        EncoderStage::Layer2,
        EncoderStage::Layer3,
        EncoderStage::Neck,
    ];

    /// The fixture key suffix (`stage.<name>`, or `embedding` for the neck) and report label.
    pub fn name(self) -> &'static str {
        match self {
            EncoderStage::PatchEmbed => "patch_embed",
            EncoderStage::Layer0 => "layers.0",
            EncoderStage::Layer1 => "layers.1",
            EncoderStage::Layer2 => "layers.2",
            EncoderStage::Layer3 => "layers.3",
            EncoderStage::Neck => "embedding",
        }
    }

    /// The output as the official code returns it (batch dropped): `[C, H, W]` for the
    /// convolutional outputs, `[L, C]` for the token outputs of the layers.
    pub fn official_shape(self) -> Vec<usize> {
        let (h, w, c) = self.nhwc();
        match self {
            EncoderStage::PatchEmbed | EncoderStage::Neck => vec![c, h, w],
            _ => vec![h * w, c],
        }
    }

    /// (H, W, C) of the NHWC output the encoder keeps on the device.
    pub fn nhwc(self) -> (usize, usize, usize) {
        match self {
            EncoderStage::PatchEmbed => (256, 256, 64),
            EncoderStage::Layer0 => (128, 128, 128),
            EncoderStage::Layer1 => (64, 64, 160),
            EncoderStage::Layer2 | EncoderStage::Layer3 => (64, 64, 320),
            EncoderStage::Neck => (EMBED_SIZE, EMBED_SIZE, EMBED_CHANNELS),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Index of an activation in the plan's tensor table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct T(usize);

/// Index of an uploaded weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct W(usize);

/// Where a LayerNorm launch takes its rows from.
#[derive(Debug, Clone, Copy)]
enum NormRows {
    /// Row r of its input.
    Plain,
    /// Token r of the window partition of its input map (the partition fused in).
    Window(WindowGeometry),
    /// Pixel r of the local conv (depthwise 3x3 + folded BN) of its input map, which is
    /// also stored to `conv_out` (the block's residual stream).
    LocalConv {
        side: usize,
        weight: W,
        bias: W,
        conv_out: T,
    },
}

/// One kernel launch of the plan, with every shape decided at load.
#[derive(Debug, Clone)]
enum OpKind {
    /// patch_embed.seq.0 on the external NCHW input.
    Stem {
        shape: Conv2dShape,
        weight: W,
        bias: W,
        out: T,
    },
    Conv {
        shape: Conv2dShape,
        input: T,
        weight: W,
        bias: Option<W>,
        out: T,
    },
    /// 1x1 convolutions and Linear layers: `[m, k] x [n, k]^T`. With `scatter`, the rows are
    /// window tokens stored (and their residual read) at their map pixels, padding dropped.
    Gemm {
        problem: GemmProblem,
        x: T,
        w: W,
        bias: Option<W>,
        activation: Activation,
        residual: Option<(T, ResidualOrder)>,
        scatter: Option<WindowGeometry>,
        y: T,
    },
    Depthwise {
        shape: DepthwiseShape,
        input: T,
        weight: W,
        bias: W,
        activation: Activation,
        out: T,
    },
    LayerNorm {
        rows: usize,
        channels: usize,
        eps: f32,
        source: NormRows,
        x: T,
        gamma: W,
        beta: W,
        y: T,
    },
    Attention {
        windows: usize,
        heads: usize,
        tokens: usize,
        qkv: T,
        bias: W,
        out: T,
    },
    /// A whole MBConv block (64 channels, expand 4), or layers.0's PatchMerging (64 -> 128,
    /// stride 2), in one launch.
    ConvBlock {
        patch_merging: bool,
        shape: ConvBlockShape,
        input: T,
        /// conv1, conv2 (depthwise taps), conv3: (weight, bias) each.
        weights: [(W, W); 3],
        out: T,
    },
    /// A TinyViT block's MLP (fc1 + GELU + fc2 + residual) in one launch, for the widths with
    /// a fused kernel; the hidden activations never reach the arena.
    Mlp {
        shape: MlpShape,
        x: T,
        /// fc1, fc2: (weight, bias) each.
        weights: [(W, W); 2],
        residual: T,
        out: T,
    },
}

impl OpKind {
    /// The activations the launch reads or writes.
    fn tensors(&self) -> Vec<T> {
        match *self {
            OpKind::Stem { out, .. } => vec![out],
            OpKind::Conv { input, out, .. }
            | OpKind::ConvBlock { input, out, .. }
            | OpKind::Depthwise { input, out, .. } => vec![input, out],
            OpKind::Gemm { x, residual, y, .. } => {
                let mut t = vec![x, y];
                t.extend(residual.map(|(r, _)| r));
                t
            }
            OpKind::LayerNorm { x, y, source, .. } => match source {
                NormRows::LocalConv { conv_out, .. } => vec![x, conv_out, y],
                _ => vec![x, y],
            },
            OpKind::Attention { qkv, out, .. } => vec![qkv, out],
            OpKind::Mlp {
                x, residual, out, ..
            } => vec![x, residual, out],
        }
    }
}

#[derive(Debug, Clone)]
struct Op {
    stage: EncoderStage,
    kind: OpKind,
    flops: f64,
}

#[derive(Debug, Clone)]
struct TensorDesc {
    name: String,
    bytes: usize,
    first: usize,
    last: usize,
    /// Live to the end of the plan (stage outputs, readable after a run).
    keep: bool,
}

/// Where the walk gets tensor values: the weights file (validated), or a recorder that lists
/// what would be read ([`required_tensors`]).
trait Source {
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
}

struct FileSource<'a>(&'a WeightsFile);

impl Source for FileSource<'_> {
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.0.expect_shape(name, shape)?;
        self.0.to_f32(name)
    }
}

#[derive(Default)]
struct Recorder(Vec<(String, Vec<usize>)>);

impl Source for Recorder {
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.0.push((name.to_string(), shape.to_vec()));
        // Zeros fold (var + eps > 0) and convert like real values.
        Ok(vec![0.0; shape.iter().product()])
    }
}

/// Every tensor the encoder reads, with its shape, under `prefix` (`"image_encoder."` in a
/// full SAM state dict).
pub fn required_tensors(prefix: &str) -> Vec<(String, Vec<usize>)> {
    let mut recorder = Recorder::default();
    // The recorder never fails and the architecture is fixed, so the walk cannot fail either;
    // an error here would be a bug in the walk, reported as an empty list by the tests.
    match EncoderPlan::walk(&mut recorder, prefix) {
        Ok(_) => recorder.0,
        Err(_) => Vec::new(),
    }
}

/// The host half of loading: weights validated and transformed (not yet uploaded), the
/// launch plan and its tensors. Needs no GPU, so it is tested on the CPU.
pub struct EncoderPlan {
    store: crate::weights::WeightStoreBuilder,
    weights: Vec<String>,
    tensors: Vec<TensorDesc>,
    ops: Vec<Op>,
    outputs: [T; 6],
}

struct Walk<'s> {
    source: &'s mut dyn Source,
    prefix: String,
    plan: EncoderPlan,
    stage: EncoderStage,
}

impl Walk<'_> {
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        self.source.read(&full, shape)
    }

    fn upload(&mut self, name: &str, shape: &[usize], values: &[f32], fp16: bool) -> Result<W> {
        let full = format!("{}{name}", self.prefix);
        if fp16 {
            self.plan.store.add_f16(&full, shape, values)?;
        } else {
            self.plan.store.add_f32(&full, shape, values)?;
        }
        self.plan.weights.push(full);
        Ok(W(self.plan.weights.len() - 1))
    }

    /// A Conv2d_BN (`<name>.c`, `<name>.bn`): the folded weight in PyTorch layout and bias.
    fn conv_bn(
        &mut self,
        name: &str,
        cout: usize,
        cin: usize,
        k: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let weight = self.read(&format!("{name}.c.weight"), &[cout, cin, k, k])?;
        let bn = |s: &mut Self, leaf: &str| s.read(&format!("{name}.bn.{leaf}"), &[cout]);
        let (gamma, beta) = (bn(self, "weight")?, bn(self, "bias")?);
        let (mean, var) = (bn(self, "running_mean")?, bn(self, "running_var")?);
        let norm = BatchNorm {
            gamma: &gamma,
            beta: &beta,
            mean: &mean,
            var: &var,
            eps: BN_EPS,
        };
        fold_batchnorm(&weight, None, &norm)
    }

    /// `(weight [out, in] fp16, bias [out] f32)` of an nn.Linear.
    fn linear(&mut self, name: &str, out: usize, inp: usize) -> Result<(W, W)> {
        let w = self.read(&format!("{name}.weight"), &[out, inp])?;
        let b = self.read(&format!("{name}.bias"), &[out])?;
        Ok((
            self.upload(&format!("{name}.weight"), &[out, inp], &w, true)?,
            self.upload(&format!("{name}.bias"), &[out], &b, false)?,
        ))
    }

    /// `(gamma, beta)` f32 of a LayerNorm / LayerNorm2d.
    fn norm(&mut self, name: &str, c: usize) -> Result<(W, W)> {
        let g = self.read(&format!("{name}.weight"), &[c])?;
        let b = self.read(&format!("{name}.bias"), &[c])?;
        Ok((
            self.upload(&format!("{name}.weight"), &[c], &g, false)?,
            self.upload(&format!("{name}.bias"), &[c], &b, false)?,
        ))
    }

    fn tensor(&mut self, name: String, elements: usize) -> T {
        self.plan.tensors.push(TensorDesc {
            name,
            bytes: elements * HALF,
            first: usize::MAX,
            last: 0,
            keep: false,
        });
        T(self.plan.tensors.len() - 1)
    }

    fn push(&mut self, kind: OpKind, flops: f64) {
        let step = self.plan.ops.len();
        for t in kind.tensors() {
            let desc = &mut self.plan.tensors[t.0];
            desc.first = desc.first.min(step);
            desc.last = desc.last.max(step);
        }
        self.plan.ops.push(Op {
            stage: self.stage,
            kind,
            flops,
        });
    }

    /// A 1x1 Conv2d_BN's folded weights, uploaded: (`[cout, cin]` fp16, bias f32).
    fn conv1x1_weights(&mut self, name: &str, cout: usize, cin: usize) -> Result<(W, W)> {
        let (w, b) = self.conv_bn(name, cout, cin, 1)?;
        Ok((
            self.upload(&format!("{name}.weight"), &[cout, cin], &w, true)?,
            self.upload(&format!("{name}.bias"), &[cout], &b, false)?,
        ))
    }

    /// A 1x1 Conv2d_BN as a GEMM over `pixels` rows.
    #[allow(clippy::too_many_arguments)]
    fn conv1x1_bn(
        &mut self,
        name: &str,
        x: T,
        pixels: usize,
        cin: usize,
        cout: usize,
        activation: Activation,
        residual: Option<(T, ResidualOrder)>,
    ) -> Result<T> {
        let (w, b) = self.conv1x1_weights(name, cout, cin)?;
        let y = self.tensor(format!("{name} out"), pixels * cout);
        self.gemm_act(
            x,
            y,
            (pixels, cout, cin),
            (w, Some(b)),
            residual,
            activation,
        );
        Ok(y)
    }

    /// A depthwise 3x3 Conv2d_BN's folded weights, uploaded: (taps `[9, c]` fp16, bias f32).
    fn depthwise_weights(&mut self, name: &str, c: usize) -> Result<(W, W)> {
        let (weight, bias) = self.conv_bn(name, c, 1, 3)?;
        let taps = depthwise_weight_taps(&weight, c, 3, 3)?;
        Ok((
            self.upload(&format!("{name}.weight"), &[9, c], &taps, true)?,
            self.upload(&format!("{name}.bias"), &[c], &bias, false)?,
        ))
    }

    /// A depthwise 3x3 Conv2d_BN (pad 1) on an `h x w x c` map.
    fn depthwise_bn(
        &mut self,
        name: &str,
        x: T,
        (h, w, c): (usize, usize, usize),
        stride: usize,
        activation: Activation,
    ) -> Result<(T, usize, usize)> {
        let (weight, bias) = self.depthwise_weights(name, c)?;
        let shape = DepthwiseShape {
            batch: 1,
            height: h,
            width: w,
            channels: c,
            kernel: 3,
            stride,
            padding: 1,
        };
        let (ho, wo) = shape
            .output_size()
            .ok_or_else(|| Error::Plan(format!("{name}: impossible depthwise geometry")))?;
        let out = self.tensor(format!("{name} out"), ho * wo * c);
        self.push(
            OpKind::Depthwise {
                shape,
                input: x,
                weight,
                bias,
                activation,
                out,
            },
            2.0 * (ho * wo * c * 9) as f64,
        );
        Ok((out, ho, wo))
    }

    fn layer_norm(&mut self, name: &str, x: T, rows: usize, c: usize, eps: f32) -> Result<T> {
        self.layer_norm_gather(name, x, rows, c, eps, NormRows::Plain)
    }

    /// A LayerNorm whose rows come from `source` applied to `x`.
    fn layer_norm_gather(
        &mut self,
        name: &str,
        x: T,
        rows: usize,
        c: usize,
        eps: f32,
        source: NormRows,
    ) -> Result<T> {
        let (gamma, beta) = self.norm(name, c)?;
        let y = self.tensor(format!("{name} out"), rows * c);
        self.push(
            OpKind::LayerNorm {
                rows,
                channels: c,
                eps,
                source,
                x,
                gamma,
                beta,
                y,
            },
            match source {
                NormRows::LocalConv { .. } => 2.0 * (rows * c * 9) as f64,
                _ => 0.0,
            },
        );
        Ok(y)
    }

    fn patch_embed(&mut self) -> Result<T> {
        let half = DIMS[0] / 2;
        let (w0, b0) = self.conv_bn("patch_embed.seq.0", half, 3, 3)?;
        let weight = self.upload("patch_embed.seq.0.weight", &[half, 3, 3, 3], &w0, true)?;
        let bias = self.upload("patch_embed.seq.0.bias", &[half], &b0, false)?;
        let stem = Conv2dShape {
            batch: 1,
            height: IMAGE_SIZE,
            width: IMAGE_SIZE,
            in_channels: 3,
            out_channels: half,
            kernel_h: 3,
            kernel_w: 3,
            stride: 2,
            padding: 1,
        };
        let mid = IMAGE_SIZE / 2;
        let out = self.tensor("patch_embed.seq.0 out".into(), mid * mid * half);
        let flops = 2.0 * (mid * mid * half * 27) as f64;
        self.push(
            OpKind::Stem {
                shape: stem,
                weight,
                bias,
                out,
            },
            flops,
        );

        let dim = DIMS[0];
        let (w2, b2) = self.conv_bn("patch_embed.seq.2", dim, half, 3)?;
        let w2 = conv_weight_ohwi(&w2, dim, half, 3, 3)?;
        let weight = self.upload("patch_embed.seq.2.weight", &[dim, 3, 3, half], &w2, true)?;
        let bias = self.upload("patch_embed.seq.2.bias", &[dim], &b2, false)?;
        let shape = Conv2dShape {
            batch: 1,
            height: mid,
            width: mid,
            in_channels: half,
            out_channels: dim,
            kernel_h: 3,
            kernel_w: 3,
            stride: 2,
            padding: 1,
        };
        let side = RESOLUTIONS[0];
        let y = self.tensor("patch_embed out".into(), side * side * dim);
        let flops = 2.0 * (side * side * dim * 9 * half) as f64;
        self.push(
            OpKind::Conv {
                shape,
                input: out,
                weight,
                bias: Some(bias),
                out: y,
            },
            flops,
        );
        Ok(y)
    }

    /// An MBConv block (64 channels, expand 4) as one fused launch: conv1 1x1 + GELU, conv2
    /// depthwise 3x3 + GELU, conv3 1x1 + shortcut, GELU.
    fn mbconv(&mut self, name: &str, x: T, side: usize, dim: usize) -> Result<T> {
        let hidden = dim * EXPAND;
        if (dim, hidden) != (MBCONV_CHANNELS, MBCONV_HIDDEN) {
            return Err(Error::Plan(format!(
                "{name}: the fused MBConv is {MBCONV_CHANNELS} -> {MBCONV_HIDDEN} channels, \
                 got {dim} -> {hidden}"
            )));
        }
        let [expand, depthwise, project] = self.conv_block_weights(name, dim, hidden, dim)?;
        let shape = ConvBlockShape {
            batch: 1,
            height: side,
            width: side,
        };
        let out = self.tensor(format!("{name} out"), side * side * dim);
        self.push(
            OpKind::ConvBlock {
                patch_merging: false,
                shape,
                input: x,
                weights: [expand, depthwise, project],
                out,
            },
            mbconv_flops(&shape),
        );
        Ok(out)
    }

    /// The folded, uploaded weights of a fused conv block (`<name>.conv1` 1x1 cin -> hidden,
    /// `<name>.conv2` depthwise 3x3, `<name>.conv3` 1x1 hidden -> cout): (weight, bias) each.
    fn conv_block_weights(
        &mut self,
        name: &str,
        cin: usize,
        hidden: usize,
        cout: usize,
    ) -> Result<[(W, W); 3]> {
        let expand = self.conv1x1_weights(&format!("{name}.conv1"), hidden, cin)?;
        let depthwise = self.depthwise_weights(&format!("{name}.conv2"), hidden)?;
        let project = self.conv1x1_weights(&format!("{name}.conv3"), cout, hidden)?;
        Ok([expand, depthwise, project])
    }

    /// PatchMerging: 1x1 + GELU, depthwise 3x3 (stride 2, or 1 for 320 outputs) + GELU, 1x1.
    fn patch_merging(
        &mut self,
        name: &str,
        x: T,
        side: usize,
        dim: usize,
        out: usize,
    ) -> Result<T> {
        let stride = if out == 320 || out == 448 || out == 576 {
            1
        } else {
            2
        };
        if (dim, out, stride) == (PATCH_MERGING_IN, PATCH_MERGING_OUT, 2) {
            // layers.0's PatchMerging: one fused launch.
            let weights = self.conv_block_weights(name, dim, out, out)?;
            let shape = ConvBlockShape {
                batch: 1,
                height: side,
                width: side,
            };
            let half = (side - 1) / 2 + 1;
            let y = self.tensor(format!("{name} out"), half * half * out);
            self.push(
                OpKind::ConvBlock {
                    patch_merging: true,
                    shape,
                    input: x,
                    weights,
                    out: y,
                },
                patch_merging_c64_flops(&shape),
            );
            return Ok(y);
        }
        let gelu = Activation::Gelu;
        let pixels = side * side;
        let h1 = self.conv1x1_bn(&format!("{name}.conv1"), x, pixels, dim, out, gelu, None)?;
        let conv2 = format!("{name}.conv2");
        let (h2, ho, wo) = self.depthwise_bn(&conv2, h1, (side, side, out), stride, gelu)?;
        let none = Activation::None;
        self.conv1x1_bn(&format!("{name}.conv3"), h2, ho * wo, out, out, none, None)
    }

    /// One TinyViTBlock on a `side x side x dim` token map.
    fn tinyvit_block(&mut self, name: &str, x: T, layer: usize) -> Result<T> {
        let (side, dim, heads, window) = (
            RESOLUTIONS[layer],
            DIMS[layer],
            HEADS[layer],
            WINDOWS[layer],
        );
        let pixels = side * side;
        let geometry = WindowGeometry {
            batch: 1,
            height: side,
            width: side,
            channels: dim,
            window,
        };
        let (windows, tokens) = (geometry.windows(), geometry.tokens());
        let rows = windows * tokens;

        // Attention on zero-padded windows: the padding goes through the attention's own
        // LayerNorm (giving beta) and qkv, unmasked, exactly as the official code. The window
        // partition is fused into that LayerNorm (it gathers its rows).
        let norm = format!("{name}.attn.norm");
        let parted = NormRows::Window(geometry);
        let normed = self.layer_norm_gather(&norm, x, rows, dim, LN_EPS, parted)?;
        let (qkv_w, qkv_b) = self.linear(&format!("{name}.attn.qkv"), 3 * dim, dim)?;
        let qkv = self.tensor(format!("{name}.attn.qkv out"), rows * 3 * dim);
        self.gemm(normed, qkv, (rows, 3 * dim, dim), (qkv_w, qkv_b), None);

        let biases_name = format!("{name}.attn.attention_biases");
        let biases = self.read(&biases_name, &[heads, window * window])?;
        let dense = tinyvit_dense_bias(&biases, heads, window)?;
        let fragments = fragment_bias(&dense, heads, tokens, tokens)?;
        let len = fragments.len();
        let bias = self.upload(&biases_name, &[len], &fragments, false)?;
        let attended = self.tensor(format!("{name}.attn out"), rows * dim);
        self.push(
            OpKind::Attention {
                windows,
                heads,
                tokens,
                qkv,
                bias,
                out: attended,
            },
            attention_flops(windows, heads, tokens, tokens, HEAD_DIM),
        );
        // proj, window reverse (crop) and `res_x + x` in one GEMM epilogue.
        let (proj_w, proj_b) = self.linear(&format!("{name}.attn.proj"), dim, dim)?;
        let x1 = self.tensor(format!("{name} attn + x"), pixels * dim);
        let problem = GemmProblem::new(rows, dim, dim);
        self.push(
            OpKind::Gemm {
                problem,
                x: attended,
                w: proj_w,
                bias: Some(proj_b),
                activation: Activation::None,
                residual: Some((x, ResidualOrder::AfterActivation)),
                scatter: Some(geometry),
                y: x1,
            },
            problem.flops(),
        );

        // local_conv (depthwise 3x3 + folded BN) fused with the MLP's LayerNorm; the conv's
        // output is stored too (the residual of fc2).
        let local = format!("{name}.local_conv");
        let (weight, bias) = self.depthwise_weights(&local, dim)?;
        let x2 = self.tensor(format!("{local} out"), pixels * dim);
        let source = NormRows::LocalConv {
            side,
            weight,
            bias,
            conv_out: x2,
        };
        let n2 =
            self.layer_norm_gather(&format!("{name}.mlp.norm"), x1, pixels, dim, LN_EPS, source)?;
        let hidden = dim * 4;
        let fc1 = self.linear(&format!("{name}.mlp.fc1"), hidden, dim)?;
        if has_fused_mlp(dim) {
            // fc1 + GELU + fc2 + `x + ...` in one launch (same bits as the two GEMMs below).
            let fc2 = self.linear(&format!("{name}.mlp.fc2"), dim, hidden)?;
            let out = self.tensor(format!("{name} out"), pixels * dim);
            let shape = MlpShape {
                rows: pixels,
                channels: dim,
            };
            self.push(
                OpKind::Mlp {
                    shape,
                    x: n2,
                    weights: [fc1, fc2],
                    residual: x2,
                    out,
                },
                tinyvit_mlp_flops(&shape),
            );
            return Ok(out);
        }
        let h = self.tensor(format!("{name}.mlp.fc1 out"), pixels * hidden);
        self.gemm_act(
            n2,
            h,
            (pixels, hidden, dim),
            (fc1.0, Some(fc1.1)),
            None,
            Activation::Gelu,
        );
        let fc2 = self.linear(&format!("{name}.mlp.fc2"), dim, hidden)?;
        let out = self.tensor(format!("{name} out"), pixels * dim);
        let residual = Some((x2, ResidualOrder::AfterActivation));
        self.gemm(h, out, (pixels, dim, hidden), fc2, residual);
        Ok(out)
    }

    fn gemm(
        &mut self,
        x: T,
        y: T,
        mnk: (usize, usize, usize),
        wb: (W, W),
        residual: Option<(T, ResidualOrder)>,
    ) {
        self.gemm_act(x, y, mnk, (wb.0, Some(wb.1)), residual, Activation::None);
    }

    fn gemm_act(
        &mut self,
        x: T,
        y: T,
        (m, n, k): (usize, usize, usize),
        (w, bias): (W, Option<W>),
        residual: Option<(T, ResidualOrder)>,
        activation: Activation,
    ) {
        let problem = GemmProblem::new(m, n, k);
        self.push(
            OpKind::Gemm {
                problem,
                x,
                w,
                bias,
                activation,
                residual,
                scatter: None,
                y,
            },
            problem.flops(),
        );
    }

    fn neck(&mut self, x: T) -> Result<T> {
        let (cin, c) = (DIMS[3], EMBED_CHANNELS);
        let pixels = EMBED_SIZE * EMBED_SIZE;
        let w0 = self.read("neck.0.weight", &[c, cin, 1, 1])?;
        let w0 = self.upload("neck.0.weight", &[c, cin], &w0, true)?;
        let y0 = self.tensor("neck.0 out".into(), pixels * c);
        self.gemm_act(x, y0, (pixels, c, cin), (w0, None), None, Activation::None);
        let n1 = self.layer_norm("neck.1", y0, pixels, c, LN2D_EPS)?;
        let w2 = self.read("neck.2.weight", &[c, c, 3, 3])?;
        let w2 = conv_weight_ohwi(&w2, c, c, 3, 3)?;
        let w2 = self.upload("neck.2.weight", &[c, 3, 3, c], &w2, true)?;
        let shape = Conv2dShape {
            batch: 1,
            height: EMBED_SIZE,
            width: EMBED_SIZE,
            in_channels: c,
            out_channels: c,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
            padding: 1,
        };
        let y2 = self.tensor("neck.2 out".into(), pixels * c);
        self.push(
            OpKind::Conv {
                shape,
                input: n1,
                weight: w2,
                bias: None,
                out: y2,
            },
            2.0 * (pixels * c * 9 * c) as f64,
        );
        self.layer_norm("neck.3", y2, pixels, c, LN2D_EPS)
    }
}

impl EncoderPlan {
    /// Validates and transforms every weight of `file` and builds the launch plan (host only).
    pub fn build(file: &WeightsFile) -> Result<EncoderPlan> {
        EncoderPlan::walk(&mut FileSource(file), weight_prefix(file))
    }

    fn walk(source: &mut dyn Source, prefix: &str) -> Result<EncoderPlan> {
        let mut walk = Walk {
            source,
            prefix: prefix.to_string(),
            plan: EncoderPlan {
                store: Default::default(),
                weights: Vec::new(),
                tensors: Vec::new(),
                ops: Vec::new(),
                outputs: [T(0); 6],
            },
            stage: EncoderStage::PatchEmbed,
        };
        let mut outputs = [T(0); 6];
        let mut x = walk.patch_embed()?;
        outputs[0] = x;
        for layer in 0..4 {
            walk.stage = EncoderStage::ALL[layer + 1];
            let (side, dim) = (RESOLUTIONS[layer], DIMS[layer]);
            for block in 0..DEPTHS[layer] {
                let name = format!("layers.{layer}.blocks.{block}");
                x = if layer == 0 {
                    walk.mbconv(&name, x, side, dim)?
                } else {
                    walk.tinyvit_block(&name, x, layer)?
                };
            }
            if layer < 3 {
                let name = format!("layers.{layer}.downsample");
                x = walk.patch_merging(&name, x, side, dim, DIMS[layer + 1])?;
            }
            outputs[layer + 1] = x;
        }
        walk.stage = EncoderStage::Neck;
        outputs[5] = walk.neck(x)?;
        let mut plan = walk.plan;
        for t in outputs {
            plan.tensors[t.0].keep = true;
        }
        plan.outputs = outputs;
        Ok(plan)
    }
}

/// The plan's launches that belong to `stage`, in order.
fn stage_ops(ops: &[Op], stage: EncoderStage) -> impl Iterator<Item = &Op> {
    ops.iter().filter(move |op| op.stage == stage)
}

/// `"image_encoder."` for a full SAM state dict, `""` for a bare TinyViT one.
fn weight_prefix(file: &WeightsFile) -> &'static str {
    let bare = file.tensors().contains_key("patch_embed.seq.0.c.weight")
        && !file
            .tensors()
            .contains_key("image_encoder.patch_embed.seq.0.c.weight");
    if bare {
        ""
    } else {
        "image_encoder."
    }
}

impl EncoderPlan {
    /// Useful floating-point operations of one stage (2 per multiply-add; attention counts the
    /// padded windows it computes, LayerNorms and copies count 0).
    pub fn flops(&self, stage: EncoderStage) -> f64 {
        stage_ops(&self.ops, stage).map(|op| op.flops).sum()
    }

    /// Kernel launches of one stage.
    pub fn launches(&self, stage: EncoderStage) -> usize {
        stage_ops(&self.ops, stage).count()
    }

    /// Names of the planned activations (the arena's tensors), in plan order.
    pub fn activation_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|t| t.name.as_str())
    }

    /// Bytes of the device weights region.
    pub fn weight_bytes(&self) -> usize {
        self.store.bytes()
    }

    /// The arena's plan (every activation placed by liveness) and each tensor's id.
    fn arena(&self) -> Result<(crate::gpu::ArenaPlan, Vec<TensorId>)> {
        let end = self.ops.len();
        let mut planner = ArenaPlanner::new();
        let mut ids = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            if t.first == usize::MAX {
                return Err(Error::Plan(format!(
                    "encoder tensor '{}' is never used",
                    t.name
                )));
            }
            let last = if t.keep { end } else { t.last };
            ids.push(planner.request(t.name.clone(), t.bytes, t.first, last)?);
        }
        Ok((planner.plan(), ids))
    }

    /// (arena bytes, bytes without sharing) of the activation plan.
    pub fn arena_bytes(&self) -> Result<(usize, usize)> {
        let (plan, _) = self.arena()?;
        Ok((plan.peak_bytes(), plan.unshared_bytes()))
    }

    /// Uploads the weights (one allocation, one copy), allocates the arena and the attention
    /// workspace: the only allocations the encoder keeps (GEMM tuning borrows a scratch
    /// input).
    pub fn instantiate(self, gpu: &Gpu) -> Result<ImageEncoder> {
        let (arena_plan, tensor_ids) = self.arena()?;
        let weights = self.store.upload(gpu)?;
        let weight_regions = self
            .weights
            .iter()
            .map(|name| {
                let t = weights.require(name)?;
                Ok(DeviceRegion::new(t.ptr, t.bytes()))
            })
            .collect::<Result<Vec<_>>>()?;
        let arena = Arena::allocate(gpu, arena_plan)?;
        let mut encoder = ImageEncoder {
            _weights: weights,
            weight_regions,
            arena,
            tensor_ids,
            ops: self.ops,
            outputs: self.outputs,
            workspace: None,
        };
        // One zeroed workspace serves every attention launch (they run in order on one
        // stream and leave it zeroed); none is needed if no launch splits its keys.
        let bound = Bound {
            encoder: &encoder,
            input: DeviceRegion::new(0, 0),
        };
        let mut need = WorkspaceNeed::default();
        for op in &encoder.ops {
            if let OpKind::Attention { .. } = op.kind {
                let attention = bound.attention(&op.kind)?;
                need.add(&plan_attention(gpu, &attention)?);
            }
        }
        if need.bytes() > 0 {
            let buffer = gpu.alloc(need.bytes())?;
            gpu.memset(buffer.ptr(), 0, need.bytes())?;
            gpu.synchronize()?;
            encoder.workspace = Some((buffer, need.counter_slots));
        }
        encoder.tune_gemms(gpu)?;
        Ok(encoder)
    }
}

/// The loaded encoder: weights on the device, the arena, the launch plan.
pub struct ImageEncoder {
    /// Owns the weights region the plan's weight regions point into.
    _weights: crate::weights::DeviceWeights,
    weight_regions: Vec<DeviceRegion>,
    arena: Arena,
    tensor_ids: Vec<TensorId>,
    ops: Vec<Op>,
    outputs: [T; 6],
    /// The attention key-split workspace and its arrival counters.
    workspace: Option<(DeviceBuffer, usize)>,
}

/// The plan's handles resolved to device addresses for one input.
struct Bound<'a> {
    encoder: &'a ImageEncoder,
    input: DeviceRegion,
}

impl Bound<'_> {
    fn t(&self, t: T) -> DeviceRegion {
        let id = self.encoder.tensor_ids[t.0];
        DeviceRegion::new(self.encoder.arena.ptr(id), self.encoder.arena.bytes(id))
    }

    fn w(&self, w: W) -> DeviceRegion {
        self.encoder.weight_regions[w.0]
    }

    fn attention(&self, kind: &OpKind) -> Result<Attention> {
        let OpKind::Attention {
            windows,
            heads,
            tokens,
            qkv,
            bias,
            out,
        } = *kind
        else {
            return Err(Error::Plan("not an attention launch".into()));
        };
        let (qkv, out, bias) = (self.t(qkv), self.t(out), self.w(bias));
        let part = |which| {
            HeadsTensor::packed_qkv(qkv.ptr, qkv.bytes, tokens, heads, HEAD_DIM, which, true)
        };
        Ok(Attention {
            batch: windows,
            heads,
            q_len: tokens,
            kv_len: tokens,
            head_dim: HEAD_DIM,
            scale: (HEAD_DIM as f32).powf(-0.5),
            q: part(0),
            k: part(1),
            v: part(2),
            o: HeadsTensor::contiguous(out.ptr, out.bytes, tokens, heads, HEAD_DIM),
            bias: Some(AttentionBias::shared(
                bias.ptr,
                bias.bytes,
                BiasDtype::F32,
                tokens,
                tokens,
                true,
            )),
            workspace: self.encoder.workspace.as_ref().map(|(b, counter_slots)| {
                AttentionWorkspace {
                    ptr: b.ptr(),
                    bytes: b.len(),
                    counter_slots: *counter_slots,
                }
            }),
        })
    }

    fn launch(&self, gpu: &Gpu, kind: &OpKind) -> Result<()> {
        match *kind {
            OpKind::Stem {
                shape,
                weight,
                bias,
                out,
            } => {
                let args = DirectConvArgs {
                    input: self.input,
                    weight: self.w(weight),
                    bias: Some(self.w(bias)),
                    activation: Activation::Gelu,
                    output: Matrix::packed(self.t(out), shape.out_channels),
                };
                launch_conv3x3_stem(gpu, &shape, &args)
            }
            OpKind::Conv {
                shape,
                input,
                weight,
                bias,
                out,
            } => {
                let args = ConvArgs {
                    input: self.t(input),
                    weight: self.w(weight),
                    output: Matrix::packed(self.t(out), shape.out_channels),
                    epilogue: Epilogue {
                        bias: bias.map(|b| self.w(b)),
                        ..Epilogue::default()
                    },
                };
                launch_conv2d(gpu, &shape, &args)
            }
            OpKind::Gemm {
                problem,
                x,
                w,
                bias,
                activation,
                residual,
                scatter,
                y,
            } => {
                let args = GemmArgs {
                    x: Matrix::packed(self.t(x), problem.k),
                    w: Matrix::packed(self.w(w), problem.k),
                    y: Matrix::packed(self.t(y), problem.n),
                    epilogue: Epilogue {
                        alpha: 1.0,
                        bias: bias.map(|b| self.w(b)),
                        activation,
                        residual: residual.map(|(r, order)| Residual {
                            matrix: Matrix::packed(self.t(r), problem.n),
                            order,
                        }),
                    },
                };
                match scatter {
                    Some(window) => launch_gemm_window_scatter(gpu, &window, &problem, &args),
                    None => launch_gemm(gpu, &problem, &args),
                }
            }
            OpKind::Depthwise {
                shape,
                input,
                weight,
                bias,
                activation,
                out,
            } => {
                let args = DirectConvArgs {
                    input: self.t(input),
                    weight: self.w(weight),
                    bias: Some(self.w(bias)),
                    activation,
                    output: Matrix::packed(self.t(out), shape.channels),
                };
                launch_depthwise_conv2d(gpu, &shape, &args)
            }
            OpKind::LayerNorm {
                rows,
                channels,
                eps,
                source,
                x,
                gamma,
                beta,
                y,
            } => {
                let mut args = LayerNormArgs {
                    rows,
                    channels,
                    eps,
                    x: self.t(x),
                    residual: None,
                    sum: None,
                    gamma: self.w(gamma),
                    beta: self.w(beta),
                    y: self.t(y),
                };
                match source {
                    NormRows::Plain => launch_layer_norm(gpu, &args),
                    NormRows::Window(window) => launch_window_layer_norm(gpu, &window, &args),
                    NormRows::LocalConv {
                        side,
                        weight,
                        bias,
                        conv_out,
                    } => {
                        args.sum = Some(self.t(conv_out));
                        let conv = DepthwisePrologue {
                            batch: 1,
                            height: side,
                            width: side,
                            weight: self.w(weight),
                            bias: self.w(bias),
                        };
                        launch_depthwise_layer_norm(gpu, &conv, &args)
                    }
                }
            }
            OpKind::Attention { .. } => launch_attention(gpu, &self.attention(kind)?),
            OpKind::ConvBlock {
                patch_merging,
                shape,
                input,
                weights: [(w1, b1), (w2, b2), (w3, b3)],
                out,
            } => {
                let args = ConvBlockArgs {
                    input: self.t(input),
                    expand_weight: self.w(w1),
                    expand_bias: self.w(b1),
                    depthwise_weight: self.w(w2),
                    depthwise_bias: self.w(b2),
                    project_weight: self.w(w3),
                    project_bias: self.w(b3),
                    output: self.t(out),
                };
                if patch_merging {
                    launch_patch_merging_c64(gpu, &shape, &args)
                } else {
                    launch_mbconv(gpu, &shape, &args)
                }
            }
            OpKind::Mlp {
                shape,
                x,
                weights: [(w1, b1), (w2, b2)],
                residual,
                out,
            } => {
                let c = shape.channels;
                let args = MlpArgs {
                    x: Matrix::packed(self.t(x), c),
                    fc1_weight: self.w(w1),
                    fc1_bias: self.w(b1),
                    fc2_weight: self.w(w2),
                    fc2_bias: self.w(b2),
                    residual: Matrix::packed(self.t(residual), c),
                    output: Matrix::packed(self.t(out), c),
                };
                launch_tinyvit_mlp(gpu, &shape, &args)
            }
        }
    }
}

impl ImageEncoder {
    /// Validates and transforms the weights of `file` (official names, `image_encoder.`
    /// prefix or none), plans the launches and allocates everything the encoder needs.
    pub fn load(gpu: &Gpu, file: &WeightsFile) -> Result<ImageEncoder> {
        EncoderPlan::build(file)?.instantiate(gpu)
    }

    /// Issues the whole encoder on the GPU's stream for `input`, the fp16 NCHW
    /// `[1, 3, 1024, 1024]` preprocessed image ([`INPUT_BYTES`]). Asynchronous; allocates
    /// nothing and never synchronises, so it can run inside a graph capture. The embedding is
    /// at [`ImageEncoder::embedding`].
    pub fn encode(&self, gpu: &Gpu, input: DeviceRegion) -> Result<()> {
        EncoderStage::ALL
            .iter()
            .try_for_each(|&stage| self.encode_stage(gpu, input, stage))
    }

    /// Issues one stage's launches. It reads the previous stage's output (kept in the arena
    /// after a full run), so stages can be replayed on their own for timing.
    pub fn encode_stage(&self, gpu: &Gpu, input: DeviceRegion, stage: EncoderStage) -> Result<()> {
        let bound = Bound {
            encoder: self,
            input,
        };
        stage_ops(&self.ops, stage).try_for_each(|op| bound.launch(gpu, &op.kind))
    }

    /// Times the GEMM kernels of every encoder shape once (one eager forward on a zeroed
    /// scratch input, GEMM launches repeated per candidate) and caches the fastest in the
    /// GPU's tuner, for later forwards and graph captures. The forward's results are garbage
    /// (in-place residual GEMMs repeat); every encode recomputes the arena from its input.
    /// Nothing runs with `FINESAM_GEMM_TUNE=0`.
    pub fn tune_gemms(&self, gpu: &Gpu) -> Result<()> {
        if !gpu.gemm_tuner().enabled() {
            return Ok(());
        }
        let input = gpu.alloc(INPUT_BYTES)?;
        gpu.memset(input.ptr(), 0, INPUT_BYTES)?;
        let region = DeviceRegion::of(&input);
        gpu.gemm_tuner().tune(gpu, || self.encode(gpu, region))?;
        gpu.synchronize()
    }

    /// The whole encoder for `input` captured as one CUDA graph.
    pub fn capture(&self, gpu: &Gpu, input: DeviceRegion) -> Result<Graph> {
        Graph::capture(gpu, || self.encode(gpu, input))
    }

    /// One stage captured as a graph (per-stage timing).
    pub fn capture_stage(
        &self,
        gpu: &Gpu,
        input: DeviceRegion,
        stage: EncoderStage,
    ) -> Result<Graph> {
        Graph::capture(gpu, || self.encode_stage(gpu, input, stage))
    }

    /// The image embedding: fp16 NHWC `[64, 64, 256]` (pixel-major; channel fastest).
    pub fn embedding(&self) -> DeviceRegion {
        self.stage_region(EncoderStage::Neck)
    }

    /// A stage's output: fp16 NHWC with the dimensions of [`EncoderStage::nhwc`].
    pub fn stage_region(&self, stage: EncoderStage) -> DeviceRegion {
        let id = self.tensor_ids[self.outputs[stage.index()].0];
        DeviceRegion::new(self.arena.ptr(id), self.arena.bytes(id))
    }

    /// Downloads a stage's output (after synchronising) in the official layout
    /// ([`EncoderStage::official_shape`]) as f32. For tests and reports, not the frame path.
    pub fn read_stage(&self, gpu: &Gpu, stage: EncoderStage) -> Result<Vec<f32>> {
        let region = self.stage_region(stage);
        let mut bytes = vec![0u8; region.bytes];
        gpu.download(&mut bytes, region.ptr)?;
        gpu.synchronize()?;
        let values: Vec<f32> = bytes
            .chunks_exact(HALF)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        let (h, w, c) = stage.nhwc();
        Ok(match stage {
            EncoderStage::PatchEmbed | EncoderStage::Neck => {
                let pixels = h * w;
                let mut nchw = vec![0.0; values.len()];
                for (p, row) in values.chunks_exact(c).enumerate() {
                    for (ch, &v) in row.iter().enumerate() {
                        nchw[ch * pixels + p] = v;
                    }
                }
                nchw
            }
            _ => values,
        })
    }

    /// The embedding as NCHW `[256, 64, 64]` f32, as `Sam.image_encoder` returns it.
    pub fn read_embedding_nchw(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        self.read_stage(gpu, EncoderStage::Neck)
    }

    /// Bytes of the activation arena.
    pub fn arena_bytes(&self) -> usize {
        self.arena.peak_bytes()
    }

    /// Kernel launches of one stage.
    pub fn launches(&self, stage: EncoderStage) -> usize {
        stage_ops(&self.ops, stage).count()
    }

    /// Floating-point operations of one stage (as [`EncoderPlan::flops`]).
    pub fn flops(&self, stage: EncoderStage) -> f64 {
        stage_ops(&self.ops, stage).map(|op| op.flops).sum()
    }
}
