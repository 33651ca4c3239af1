//! MobileSAM prompt encoder + mask decoder (`PromptEncoder`, `MaskDecoder`, `TwoWayTransformer`
//! of the official code), batched over K prompts, as a fixed list of launches over one arena:
//! graph-capturable, no allocation per decode.
//!
//! Image side (per prompt `[4096, 256]` fp16, NHWC): without a mask input the dense prompt
//! embedding is `no_mask_embed`, a constant, so it is folded into biases; with one
//! (`DecodeConfig::mask_input`) `sam_mask_embed` writes each prompt's `embedding +
//! mask_downscaling(mask)` as its keys and block 0 runs per prompt, as block 1 does. The positional
//! terms `pe @ W^T` of every projection that sees `keys + key_pe` are constant tables computed
//! at load and added as the GEMM residual, so `keys + pe` is never materialised. In the first
//! block the keys are the same for every prompt, so their projections run once (batch 1) and
//! are shared (batch stride 0). Token side (`[K, T, 256]`, T = 5 + prompt points): `query_pe`
//! is the initial tokens, so its projections for all layers are one GEMM per decode; each
//! attention's out_proj + residual + LayerNorm is one launch (`ops::sam_tokens`), and so is each
//! MLP + residual + norm3 (two: hidden-chunk partials, then their ordered sum and the norm).
//! Output upscaling: the first ConvTranspose2d(k2 s2) is a GEMM with columns ordered (dy, dx,
//! channel); one kernel then runs LayerNorm2d + GELU on its rows of 64 channels, the second
//! ConvTranspose2d + GELU on tensor cores and the hypernetwork product in fp32, writing the
//! logits in image order (the `[K, 32, 256, 256]` map is never stored). Box prompts (at most
//! [`FOLD_MAX_TOKENS`] tokens) run folded cross attentions: the projections of the image rows
//! are folded into per-token factors (`sam_head_fold`), the attentions read `keys + pe` itself
//! (`sam_folded_t2i`, `sam_folded_image_to_token`), the first ConvTranspose2d comes with its
//! LayerNorm2d + GELU (`sam_convt1_ln_gelu`), and independent work runs on a second stream
//! (`Gpu::fork_join`). See docs/MOBILESAM.md.

use half::f16;

use super::prompt::{
    dense_positional_encoding, validate_mask_input, PromptKind, Prompts, PROMPT_HEADER_BYTES,
};
use crate::error::{Error, Result};
use crate::gpu::{Arena, ArenaPlanner, DeviceBuffer, DevicePtr, Gpu, TensorId};
use crate::ops::attention::{launch_attention, Attention, HeadsTensor};
use crate::ops::gemm::{
    launch_gemm, Activation, Epilogue, GemmArgs, GemmProblem, Matrix, Residual, ResidualOrder,
};
use crate::ops::sam_cross_attention::{
    cross_attention_workspace, launch_cross_attention, CrossAttentionArgs, CrossAttentionWorkspace,
    CrossRows,
};
use crate::ops::sam_decoder::{
    convt1_ctas, launch_convt1_ln_gelu, launch_image_to_token, launch_mask_embed,
    launch_prompt_encode, launch_upscale_masks, mask_params, masks_per_prompt, ConvT1Args,
    ImageToTokenArgs, MaskEmbedArgs, PromptEncodeArgs, UpscaleMaskArgs, CONVT1_SMEM_BYTES,
    EMBED_PIXELS, HEADS, MASK_INPUT_PIXELS, OUTPUT_TOKENS, SAM_DIM, UPSCALE1_CHANNELS,
    UPSCALED_CHANNELS,
};
use crate::ops::sam_folded_i2t::{
    launch_folded_image_to_token, FoldedImageToTokenArgs, FOLDED_I2T_SMEM_BYTES,
};
use crate::ops::sam_folded_t2i::{
    folded_token_to_image_workspace, launch_folded_token_to_image, plan_folded_token_to_image,
    FoldedTokenToImageArgs, FOLDED_T2I_SMEM_BYTES,
};
use crate::ops::sam_heads::{heads_output_bytes, launch_heads, HeadsArgs};
use crate::ops::sam_tokens::{
    launch_head_fold, launch_token_linear, launch_token_mlp, token_mlp_scratch_bytes, HeadFold,
    TokenLinearArgs, TokenMlpArgs,
};
use crate::ops::DeviceRegion;
use crate::weights::{DeviceWeights, WeightStoreBuilder, WeightsFile};

const D: usize = SAM_DIM;
/// Internal width of the cross attentions (`downsample_rate` 2).
const CROSS: usize = D / 2;
const HEADS_N: usize = 8;
const MLP: usize = 2048;
const PIXELS: usize = EMBED_PIXELS;
/// Columns of the keys-side projection of a block: `[q_i2t | k_t2i | v_t2i]`.
const KEYS_N: usize = 3 * CROSS;
/// Columns of the final keys projection: `[k | v | first ConvTranspose2d]` (both read the
/// final keys, so they are one GEMM).
const FINAL_N: usize = 2 * CROSS + 4 * UP1;
/// Column of the first ConvTranspose2d's output in the final keys projection.
const FINAL_UP1: usize = 2 * CROSS;
/// Columns of each block's post-MLP token GEMM: `[i2t k | i2t v | block 1 q | k | v]` after
/// block 0, `[i2t k | i2t v | final q]` after block 1 (the positional slices I2T_KV0.. and
/// I2T_KV1.. cover exactly these columns).
const POST_N: [usize; 2] = [2 * CROSS + 3 * D, 3 * CROSS];
/// Upscaling: 64 channels after the first ConvTranspose2d, 32 after the second.
const UP1: usize = UPSCALE1_CHANNELS;
const UP2: usize = UPSCALED_CHANNELS;
/// Hidden width of the hypernetwork and IoU MLPs.
const HEAD_HIDDEN: usize = 256;
/// nn.LayerNorm default and LayerNorm2d eps.
const LN_EPS: f32 = 1e-5;
const LN2D_EPS: f32 = 1e-6;
/// Most tokens per prompt for which the cross attentions run folded (on devices with the shared
/// memory of sm_90): their projections of the 4096 image rows are replaced by per-token factors
/// (cheaper while 8 T is below ~128; box prompts have T = 7). See docs/MOBILESAM.md.
pub const FOLD_MAX_TOKENS: usize = 8;
/// SMs a big one-CTA-per-SM kernel (folded image->token attention, first ConvTranspose2d)
/// leaves to the small token launches (1-28 CTAs each) issued beside it on the other stream.
const SPARE_SMS: usize = 4;

/// Column offsets of the token positional projections (`query_pe @ W^T` for every projection
/// that sees `queries + query_pe`), one GEMM per decode. Zero columns stand where the GEMM
/// that uses a slice as its residual also produces values (v) that take no positional term.
mod pe_cols {
    /// Block 0 token->image q.
    pub const T2I_Q0: usize = 0;
    /// Block 0 image->token [k | 0].
    pub const I2T_KV0: usize = 128;
    /// Block 1 self attention [q | k | 0].
    pub const SELF1: usize = 384;
    /// Block 1 token->image q.
    pub const T2I_Q1: usize = 1152;
    /// Block 1 image->token [k | 0].
    pub const I2T_KV1: usize = 1280;
    /// Final token->image q.
    pub const FINAL_Q: usize = 1536;
    /// Block 0 self attention [q | k | v] of the tokens themselves (no positional term: these
    /// columns are block 0's qkv projection, computed by the same GEMM, with their bias).
    pub const L0_QKV: usize = 1664;
    /// Total.
    pub const WIDTH: usize = 2432;
}

/// What a decode plan serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeConfig {
    /// Most prompts per decode (the batch a captured graph runs).
    pub max_prompts: usize,
    /// Boxes, or a fixed number of points per prompt.
    pub kind: PromptKind,
    /// Three masks per prompt (mask tokens 1..4) instead of one (token 0).
    pub multimask: bool,
    /// Each prompt comes with a low-res mask input ([`DecodePlan::stage_mask_input`]): the
    /// dense prompt embedding is `mask_downscaling(mask)` instead of `no_mask_embed`, so block
    /// 0's keys are per prompt (one more launch; its keys projection runs batched).
    pub mask_input: bool,
}

/// The launch groups of a decode, in issue order ([`MaskDecoder::decode_part`] issues one alone,
/// for per-part timing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodePart {
    /// Prompt encoding, the token positional projections and block 0's shared keys projection
    /// (with mask inputs: the per-prompt keys `embedding + mask_downscaling(mask)` instead).
    Prompt,
    /// Two-way block 0 (image side batched over prompts from its image->token attention on;
    /// with mask inputs also its keys projection).
    Block0,
    /// Two-way block 1 (its own keys projection, batched).
    Block1,
    /// Final token->image attention with its keys projection, which also computes the first
    /// ConvTranspose2d (one GEMM 4096 x 256 -> [k | v | convT 1] = 512 per prompt). Folded: the
    /// attention, its out_proj + norm, `sam_convt1_ln_gelu` and (3+ prompts on 132 SMs) the heads.
    Final,
    /// IoU head + 4 hypernetwork MLPs (one kernel, `sam_heads`).
    Heads,
    /// LayerNorm2d + GELU + second ConvTranspose2d + GELU + mask product (one kernel).
    UpscaleMasks,
}

impl DecodePart {
    /// Every part in issue order.
    pub const ALL: [DecodePart; 6] = [
        DecodePart::Prompt,
        DecodePart::Block0,
        DecodePart::Block1,
        DecodePart::Final,
        DecodePart::Heads,
        DecodePart::UpscaleMasks,
    ];

    /// A short name (bench output).
    pub fn name(self) -> &'static str {
        match self {
            DecodePart::Prompt => "prompt+pe+shared keys",
            DecodePart::Block0 => "block 0",
            DecodePart::Block1 => "block 1",
            DecodePart::Final => "final attention+convT 1",
            DecodePart::Heads => "heads",
            DecodePart::UpscaleMasks => "ln+convT 2+masks",
        }
    }
}

/// Host-side prepared weights: validated, transformed, ready to upload (public so weight
/// validation can be tested without a GPU).
pub struct PreparedWeights {
    store: WeightStoreBuilder,
}

impl PreparedWeights {
    /// Reads and validates every `prompt_encoder.*` / `mask_decoder.*` tensor the decoder uses
    /// (official names and shapes, finite values) and builds the device tensors.
    pub fn prepare(file: &WeightsFile) -> Result<PreparedWeights> {
        validate_shapes(file)?;
        let t = |name: &str| file.to_f32(name);
        let pe = "prompt_encoder.";
        let md = "mask_decoder.";
        let tr = "mask_decoder.transformer.";
        let mut s = WeightStoreBuilder::new();

        let gauss = t(&format!("{pe}pe_layer.positional_encoding_gaussian_matrix"))?;
        s.add_f32("prompt.gauss", &[2, 128], &gauss)?;
        let mut labels = Vec::with_capacity(5 * D);
        for i in 0..4 {
            labels.extend(t(&format!("{pe}point_embeddings.{i}.weight"))?);
        }
        labels.extend(t(&format!("{pe}not_a_point_embed.weight"))?);
        s.add_f32("prompt.labels", &[5, D], &labels)?;
        let mut output_tokens = t(&format!("{md}iou_token.weight"))?;
        output_tokens.extend(t(&format!("{md}mask_tokens.weight"))?);
        s.add_f32("prompt.output_tokens", &[5, D], &output_tokens)?;
        let no_mask = t(&format!("{pe}no_mask_embed.weight"))?;
        let mut packed = Vec::with_capacity(mask_params::LEN);
        for (suffix, _) in mask_params::TENSORS {
            packed.extend(t(&format!("{pe}mask_downscaling.{suffix}"))?);
        }
        s.add_f32("mask.params", &[mask_params::LEN], &packed)?;
        let dense_pe = dense_positional_encoding(&gauss);
        // `key_pe` itself, for the folded cross attentions (they read keys + pe).
        s.add_f16("pe.image", &[PIXELS, D], &dense_pe)?;

        let linear = |prefix: &str| -> Result<(Vec<f32>, Vec<f32>)> {
            Ok((
                t(&format!("{prefix}.weight"))?,
                t(&format!("{prefix}.bias"))?,
            ))
        };
        let mut pe_w = vec![0f32; pe_cols::WIDTH * D];
        let mut pe_b = vec![0f32; pe_cols::WIDTH];
        let mut put_pe =
            |col: usize, w: &[f32]| pe_w[col * D..col * D + w.len()].copy_from_slice(w);
        // Token GEMMs after each block's MLP (their input is the same queries):
        // block 0 [i2t k | i2t v | block 1 q | k | v], block 1 [i2t k | i2t v | final q].
        let mut post: [(Vec<f32>, Vec<f32>); 2] = Default::default();
        for l in 0..2 {
            let p = format!("{tr}layers.{l}");
            let (wq, bq) = linear(&format!("{p}.self_attn.q_proj"))?;
            let (wk, bk) = linear(&format!("{p}.self_attn.k_proj"))?;
            let (wv, bv) = linear(&format!("{p}.self_attn.v_proj"))?;
            if l == 0 {
                // Block 0 attends over the tokens themselves: its qkv projection is part of the
                // per-decode token GEMM (same input).
                put_pe(pe_cols::L0_QKV, &cat(&[&wq, &wk, &wv]));
                pe_b[pe_cols::L0_QKV..pe_cols::L0_QKV + 3 * D]
                    .copy_from_slice(&cat(&[&bq, &bk, &bv]));
            } else {
                // Block 1's qkv projection is part of block 0's post-MLP token GEMM.
                post[0].0.extend(cat(&[&wq, &wk, &wv]));
                post[0].1.extend(cat(&[&bq, &bk, &bv]));
                put_pe(pe_cols::SELF1, &wq);
                put_pe(pe_cols::SELF1 + D, &wk);
            }
            add_linear(
                &mut s,
                file,
                &format!("{p}.self_attn.out_proj"),
                &format!("l{l}.self.out"),
            )?;
            for n in 1..=4 {
                add_norm(
                    &mut s,
                    file,
                    &format!("{p}.norm{n}"),
                    &format!("l{l}.norm{n}"),
                )?;
            }
            // Token -> image: q from the tokens, k/v from the keys.
            let c = format!("{p}.cross_attn_token_to_image");
            let (wq, bq) = linear(&format!("{c}.q_proj"))?;
            s.add_f16(&format!("l{l}.t2i.q.w"), &[CROSS, D], &wq)?;
            s.add_f32(&format!("l{l}.t2i.q.b"), &[CROSS], &bq)?;
            put_pe(
                if l == 0 {
                    pe_cols::T2I_Q0
                } else {
                    pe_cols::T2I_Q1
                },
                &wq,
            );
            let (wk, bk) = linear(&format!("{c}.k_proj"))?;
            let (wv, bv) = linear(&format!("{c}.v_proj"))?;
            add_linear(
                &mut s,
                file,
                &format!("{c}.out_proj"),
                &format!("l{l}.t2i.out"),
            )?;
            // Image -> token: q from the keys, k/v from the tokens.
            let c2 = format!("{p}.cross_attn_image_to_token");
            let (wq2, bq2) = linear(&format!("{c2}.q_proj"))?;
            let (wk2, bk2) = linear(&format!("{c2}.k_proj"))?;
            let (wv2, bv2) = linear(&format!("{c2}.v_proj"))?;
            // [k | v] lead the post-MLP GEMM's columns (block 1's qkv, added to post[0] in
            // iteration 1, and the final q follow them).
            post[l].0.extend(cat(&[&wk2, &wv2]));
            post[l].1.extend(cat(&[&bk2, &bv2]));
            put_pe(
                if l == 0 {
                    pe_cols::I2T_KV0
                } else {
                    pe_cols::I2T_KV1
                },
                &wk2,
            );
            let (wo2, mut bo2) = linear(&format!("{c2}.out_proj"))?;
            // Keys-side projection [q_i2t | k_t2i | v_t2i] and its positional table.
            let keys_w = cat(&[&wq2, &wk, &wv]);
            let mut keys_b = cat(&[&bq2, &bk, &bv]);
            if l == 0 {
                // With mask inputs block 0's keys are per prompt: unfolded biases.
                s.add_f32("mask.l0.keys.b", &[KEYS_N], &keys_b)?;
                s.add_f32("mask.l0.i2t.out.b", &[D], &bo2)?;
                // Without, they are `embedding + no_mask_embed`: fold the constant into the
                // biases of what reads them (the projections and the residual of norm4).
                for (n, b) in keys_b.iter_mut().enumerate() {
                    *b += dot(&keys_w[n * D..(n + 1) * D], &no_mask);
                }
                for (b, m) in bo2.iter_mut().zip(&no_mask) {
                    *b += m;
                }
            }
            s.add_f16(&format!("l{l}.keys.w"), &[KEYS_N, D], &keys_w)?;
            s.add_f32(&format!("l{l}.keys.b"), &[KEYS_N], &keys_b)?;
            let table = project(
                &dense_pe,
                PIXELS,
                &keys_w[..2 * CROSS * D],
                2 * CROSS,
                KEYS_N,
            );
            s.add_f16(&format!("l{l}.keys.pe"), &[PIXELS, KEYS_N], &table)?;
            s.add_f16(&format!("l{l}.i2t.out.w"), &[D, CROSS], &wo2)?;
            // The folded image->token attention expands v through out_proj per head: W_o^T.
            let mut wo2_t = vec![0f32; CROSS * D];
            for (o, row) in wo2.chunks_exact(CROSS).enumerate() {
                for (i, &w) in row.iter().enumerate() {
                    wo2_t[i * D + o] = w;
                }
            }
            s.add_f16(&format!("l{l}.i2t.out.wt"), &[CROSS, D], &wo2_t)?;
            s.add_f32(&format!("l{l}.i2t.out.b"), &[D], &bo2)?;
            add_linear(
                &mut s,
                file,
                &format!("{p}.mlp.lin1"),
                &format!("l{l}.lin1"),
            )?;
            add_linear(
                &mut s,
                file,
                &format!("{p}.mlp.lin2"),
                &format!("l{l}.lin2"),
            )?;
        }
        let c = format!("{tr}final_attn_token_to_image");
        let (wq, bq) = linear(&format!("{c}.q_proj"))?;
        post[1].0.extend(&wq);
        post[1].1.extend(&bq);
        put_pe(pe_cols::FINAL_Q, &wq);
        for (l, (w, b)) in post.iter().enumerate() {
            s.add_f16(&format!("l{l}.post.w"), &[POST_N[l], D], w)?;
            s.add_f32(&format!("l{l}.post.b"), &[POST_N[l]], b)?;
        }
        let (wk, bk) = linear(&format!("{c}.k_proj"))?;
        let (wv, bv) = linear(&format!("{c}.v_proj"))?;
        // output_upscaling: ConvTranspose2d weight [in, out, 2, 2] -> GEMM rows (dy, dx, out).
        let up = format!("{md}output_upscaling");
        let convt = |w: &[f32], cin: usize, cout: usize| {
            let mut g = vec![0f32; 4 * cout * cin];
            for i in 0..cin {
                for o in 0..cout {
                    for k in 0..4 {
                        g[(k * cout + o) * cin + i] = w[(i * cout + o) * 4 + k];
                    }
                }
            }
            g
        };
        let (w0, b0) = linear(&format!("{up}.0"))?;
        // The first ConvTranspose2d reads the same keys as the final k/v projection: one GEMM
        // [k | v | convT 1]; only k takes the positional table (zero columns elsewhere).
        let keys_w = cat(&[&wk, &wv, &convt(&w0, D, UP1)]);
        s.add_f16("final.keys.w", &[FINAL_N, D], &keys_w)?;
        s.add_f32("final.keys.b", &[FINAL_N], &cat(&[&bk, &bv, &b0.repeat(4)]))?;
        let table = project(&dense_pe, PIXELS, &wk, CROSS, FINAL_N);
        s.add_f16("final.keys.pe", &[PIXELS, FINAL_N], &table)?;
        add_linear(&mut s, file, &format!("{c}.out_proj"), "final.out")?;
        add_norm(&mut s, file, &format!("{tr}norm_final_attn"), "final.norm")?;
        s.add_f16("pe_tokens.w", &[pe_cols::WIDTH, D], &pe_w)?;
        s.add_f32("pe_tokens.b", &[pe_cols::WIDTH], &pe_b)?;

        add_norm(&mut s, file, &format!("{up}.1"), "up1.ln")?;
        let (w3, b3) = linear(&format!("{up}.3"))?;
        s.add_f16("up2.w", &[4 * UP2, UP1], &convt(&w3, UP1, UP2))?;
        s.add_f32("up2.b", &[4 * UP2], &b3.repeat(4))?;

        // Heads, stacked for `sam_heads`: index 0 the IoU head (last layer padded 4 -> 32 rows
        // and biases with zeros), 1..5 the hypernetworks.
        let mut head_w: [Vec<f32>; 3] = Default::default();
        let mut head_bias: [Vec<f32>; 3] = Default::default();
        for h in 0..HEADS {
            let prefix = if h == 0 {
                format!("{md}iou_prediction_head")
            } else {
                format!("{md}output_hypernetworks_mlps.{}", h - 1)
            };
            for layer in 0..3 {
                let (mut w, mut b) = linear(&format!("{prefix}.layers.{layer}"))?;
                if layer == 2 {
                    w.resize(UP2 * HEAD_HIDDEN, 0.0);
                    b.resize(UP2, 0.0);
                }
                head_w[layer].extend(w);
                head_bias[layer].extend(b);
            }
        }
        s.add_f16("heads.l1.w", &[HEADS, HEAD_HIDDEN, D], &head_w[0])?;
        s.add_f32("heads.l1.b", &[HEADS, HEAD_HIDDEN], &head_bias[0])?;
        s.add_f16("heads.l2.w", &[HEADS, HEAD_HIDDEN, HEAD_HIDDEN], &head_w[1])?;
        s.add_f32("heads.l2.b", &[HEADS, HEAD_HIDDEN], &head_bias[1])?;
        s.add_f16("heads.l3.w", &[HEADS, UP2, HEAD_HIDDEN], &head_w[2])?;
        s.add_f32("heads.l3.b", &[HEADS, UP2], &head_bias[2])?;
        Ok(PreparedWeights { store: s })
    }

    /// Bytes the device weights region will take.
    pub fn device_bytes(&self) -> usize {
        self.store.bytes()
    }
}

fn cat(parts: &[&[f32]]) -> Vec<f32> {
    parts.concat()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum::<f64>() as f32
}

/// `x [rows, 256] @ w[..n]^T`, written into the first n of `width` columns (rest zero).
fn project(x: &[f32], rows: usize, w: &[f32], n: usize, width: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * width];
    for (r, row) in x.chunks_exact(D).take(rows).enumerate() {
        for (c, wr) in w.chunks_exact(D).take(n).enumerate() {
            out[r * width + c] = row.iter().zip(wr).map(|(a, b)| a * b).sum();
        }
    }
    out
}

fn add_linear(s: &mut WeightStoreBuilder, f: &WeightsFile, name: &str, to: &str) -> Result<()> {
    let w = f.info(&format!("{name}.weight"))?.shape.clone();
    s.add_f16(
        &format!("{to}.w"),
        &w,
        &f.to_f32(&format!("{name}.weight"))?,
    )?;
    s.add_f32(
        &format!("{to}.b"),
        &[w[0]],
        &f.to_f32(&format!("{name}.bias"))?,
    )
}

fn add_norm(s: &mut WeightStoreBuilder, f: &WeightsFile, name: &str, to: &str) -> Result<()> {
    let g = f.to_f32(&format!("{name}.weight"))?;
    s.add_f32(&format!("{to}.g"), &[g.len()], &g)?;
    s.add_f32(
        &format!("{to}.b"),
        &[g.len()],
        &f.to_f32(&format!("{name}.bias"))?,
    )
}

/// Every tensor the decoder reads, by official name, with its shape.
pub fn expected_tensors() -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: &[usize]| v.push((name, shape.to_vec()));
    let pe = "prompt_encoder";
    add(
        format!("{pe}.pe_layer.positional_encoding_gaussian_matrix"),
        &[2, 128],
    );
    for i in 0..4 {
        add(format!("{pe}.point_embeddings.{i}.weight"), &[1, D]);
    }
    add(format!("{pe}.not_a_point_embed.weight"), &[1, D]);
    add(format!("{pe}.no_mask_embed.weight"), &[1, D]);
    for (suffix, shape) in mask_params::TENSORS {
        add(format!("{pe}.mask_downscaling.{suffix}"), shape);
    }
    let md = "mask_decoder";
    add(format!("{md}.iou_token.weight"), &[1, D]);
    add(format!("{md}.mask_tokens.weight"), &[4, D]);
    let mut linear = |name: String, out: usize, inp: usize| {
        add(format!("{name}.weight"), &[out, inp]);
        add(format!("{name}.bias"), &[out]);
    };
    let attention =
        |name: String, internal: usize, linear: &mut dyn FnMut(String, usize, usize)| {
            for p in ["q", "k", "v"] {
                linear(format!("{name}.{p}_proj"), internal, D);
            }
            linear(format!("{name}.out_proj"), D, internal);
        };
    let tr = format!("{md}.transformer");
    for l in 0..2 {
        let p = format!("{tr}.layers.{l}");
        attention(format!("{p}.self_attn"), D, &mut linear);
        attention(format!("{p}.cross_attn_token_to_image"), CROSS, &mut linear);
        attention(format!("{p}.cross_attn_image_to_token"), CROSS, &mut linear);
        linear(format!("{p}.mlp.lin1"), MLP, D);
        linear(format!("{p}.mlp.lin2"), D, MLP);
    }
    attention(
        format!("{tr}.final_attn_token_to_image"),
        CROSS,
        &mut linear,
    );
    for h in 0..4 {
        let p = format!("{md}.output_hypernetworks_mlps.{h}.layers");
        linear(format!("{p}.0"), D, D);
        linear(format!("{p}.1"), D, D);
        linear(format!("{p}.2"), UP2, D);
    }
    let p = format!("{md}.iou_prediction_head.layers");
    linear(format!("{p}.0"), HEAD_HIDDEN, D);
    linear(format!("{p}.1"), HEAD_HIDDEN, HEAD_HIDDEN);
    linear(format!("{p}.2"), 4, HEAD_HIDDEN);
    for l in 0..2 {
        for n in 1..=4 {
            let name = format!("{tr}.layers.{l}.norm{n}");
            add(format!("{name}.weight"), &[D]);
            add(format!("{name}.bias"), &[D]);
        }
    }
    add(format!("{tr}.norm_final_attn.weight"), &[D]);
    add(format!("{tr}.norm_final_attn.bias"), &[D]);
    let up = format!("{md}.output_upscaling");
    add(format!("{up}.0.weight"), &[D, UP1, 2, 2]);
    add(format!("{up}.0.bias"), &[UP1]);
    add(format!("{up}.1.weight"), &[UP1]);
    add(format!("{up}.1.bias"), &[UP1]);
    add(format!("{up}.3.weight"), &[UP1, UP2, 2, 2]);
    add(format!("{up}.3.bias"), &[UP2]);
    v
}

fn validate_shapes(file: &WeightsFile) -> Result<()> {
    for (name, shape) in expected_tensors() {
        file.expect_shape(&name, &shape)?;
    }
    Ok(())
}

/// Device addresses of the weights, resolved once at load.
struct LayerWeights {
    self_out: (DeviceRegion, DeviceRegion),
    norms: [(DeviceRegion, DeviceRegion); 4],
    t2i_q: (DeviceRegion, DeviceRegion),
    keys: (DeviceRegion, DeviceRegion),
    keys_pe: DeviceRegion,
    t2i_out: (DeviceRegion, DeviceRegion),
    lin1: (DeviceRegion, DeviceRegion),
    lin2: (DeviceRegion, DeviceRegion),
    /// The post-MLP token GEMM (`POST_N[l]` columns).
    post: (DeviceRegion, DeviceRegion),
    i2t_out: (DeviceRegion, DeviceRegion),
    /// out_proj's weight transposed, `[128, 256]` fp16 (the folded image->token values).
    i2t_out_t: DeviceRegion,
}

/// What mask-input plans use instead of block 0's folded biases.
struct MaskInputWeights {
    /// `[mask_params::LEN]` f32 packed `mask_downscaling`.
    params: DeviceRegion,
    /// Block 0's keys projection bias without `no_mask_embed` folded in.
    keys_b: DeviceRegion,
    /// Block 0's image->token out_proj bias without `no_mask_embed`.
    i2t_out_b: DeviceRegion,
}

struct FinalWeights {
    keys: (DeviceRegion, DeviceRegion),
    keys_pe: DeviceRegion,
    out: (DeviceRegion, DeviceRegion),
    norm: (DeviceRegion, DeviceRegion),
}

/// The loaded prompt encoder and mask decoder.
pub struct MaskDecoder {
    weights: DeviceWeights,
    gauss: DeviceRegion,
    labels: DeviceRegion,
    output_tokens: DeviceRegion,
    pe_tokens: (DeviceRegion, DeviceRegion),
    /// The dense positional encoding `[4096, 256]` fp16 (`key_pe`).
    pe_image: DeviceRegion,
    layers: [LayerWeights; 2],
    last: FinalWeights,
    mask: MaskInputWeights,
    up1_ln: (DeviceRegion, DeviceRegion),
    up2: (DeviceRegion, DeviceRegion),
    /// The head MLPs' (weight, bias) per layer, stacked over the 5 MLPs.
    heads: [(DeviceRegion, DeviceRegion); 3],
}

impl MaskDecoder {
    /// Validates `prompt_encoder.*` and `mask_decoder.*` of an official MobileSAM state dict,
    /// transforms them (fused projections, folded constants, positional tables of the 64x64
    /// grid) and uploads them in one copy.
    pub fn load(gpu: &Gpu, file: &WeightsFile) -> Result<MaskDecoder> {
        let prepared = PreparedWeights::prepare(file).map_err(|e| match e {
            Error::Plan(message) => Error::WeightsFile {
                path: file.path().to_path_buf(),
                message,
            },
            other => other,
        })?;
        let weights = prepared.store.upload(gpu)?;
        let r = |name: &str| -> Result<DeviceRegion> {
            let t = weights.require(name)?;
            Ok(DeviceRegion::new(t.ptr, t.bytes()))
        };
        let lin = |name: &str| -> Result<(DeviceRegion, DeviceRegion)> {
            Ok((r(&format!("{name}.w"))?, r(&format!("{name}.b"))?))
        };
        let norm = |name: &str| -> Result<(DeviceRegion, DeviceRegion)> {
            Ok((r(&format!("{name}.g"))?, r(&format!("{name}.b"))?))
        };
        let layer = |l: usize| -> Result<LayerWeights> {
            Ok(LayerWeights {
                self_out: lin(&format!("l{l}.self.out"))?,
                norms: [
                    norm(&format!("l{l}.norm1"))?,
                    norm(&format!("l{l}.norm2"))?,
                    norm(&format!("l{l}.norm3"))?,
                    norm(&format!("l{l}.norm4"))?,
                ],
                t2i_q: lin(&format!("l{l}.t2i.q"))?,
                keys: lin(&format!("l{l}.keys"))?,
                keys_pe: r(&format!("l{l}.keys.pe"))?,
                t2i_out: lin(&format!("l{l}.t2i.out"))?,
                lin1: lin(&format!("l{l}.lin1"))?,
                lin2: lin(&format!("l{l}.lin2"))?,
                post: lin(&format!("l{l}.post"))?,
                i2t_out: lin(&format!("l{l}.i2t.out"))?,
                i2t_out_t: r(&format!("l{l}.i2t.out.wt"))?,
            })
        };
        Ok(MaskDecoder {
            gauss: r("prompt.gauss")?,
            labels: r("prompt.labels")?,
            output_tokens: r("prompt.output_tokens")?,
            pe_tokens: lin("pe_tokens")?,
            pe_image: r("pe.image")?,
            layers: [layer(0)?, layer(1)?],
            last: FinalWeights {
                keys: lin("final.keys")?,
                keys_pe: r("final.keys.pe")?,
                out: lin("final.out")?,
                norm: norm("final.norm")?,
            },
            mask: MaskInputWeights {
                params: r("mask.params")?,
                keys_b: r("mask.l0.keys.b")?,
                i2t_out_b: r("mask.l0.i2t.out.b")?,
            },
            up1_ln: norm("up1.ln")?,
            up2: lin("up2")?,
            heads: [lin("heads.l1")?, lin("heads.l2")?, lin("heads.l3")?],
            weights,
        })
    }

    /// Bytes of the device weights region.
    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }

    /// Plans the arena for `config` and allocates it (the only allocation the plan keeps).
    pub fn plan(&self, gpu: &Gpu, config: DecodeConfig) -> Result<DecodePlan> {
        DecodePlan::new(gpu, config)
    }

    /// Issues the prompt encoder and mask decoder for the first `batch` prompts of the plan's
    /// prompt block (staged by [`DecodePlan::stage_prompts`] or written by an earlier GPU
    /// stage) on the image embedding (NHWC `[64, 64, 256]` fp16) of the frame whose
    /// `FrameHeader` is at `header`. Launches only (graph-capturable); `batch` fixes the
    /// launch sizes, the device count decides which prompts are real (past it: padding,
    /// computed but ignored by mask decoding through [`DecodePlan::mask_count`]).
    pub fn decode(
        &self,
        gpu: &Gpu,
        plan: &DecodePlan,
        embedding: DeviceRegion,
        header: DeviceRegion,
        batch: usize,
    ) -> Result<()> {
        plan.launch(gpu, self, embedding, header, batch, None)
    }

    /// Issues only the launches of `part` (per-part timing). Its inputs are whatever the arena
    /// holds (a full decode first makes them meaningful); outputs of other parts may be
    /// overwritten where the arena reuses memory, so a decode after timing must be complete.
    pub fn decode_part(
        &self,
        gpu: &Gpu,
        plan: &DecodePlan,
        embedding: DeviceRegion,
        header: DeviceRegion,
        batch: usize,
        part: DecodePart,
    ) -> Result<()> {
        plan.launch(gpu, self, embedding, header, batch, Some(part))
    }
}

/// Arena tensors of a plan.
struct Ids {
    prompts: TensorId,
    tokens: TensorId,
    pe: TensorId,
    queries: TensorId,
    tok_o: TensorId,
    tq: TensorId,
    /// The token MLP's f32 partial products per hidden chunk (blocks 0 and 1).
    mlp_partials: TensorId,
    post: [TensorId; 2],
    /// The head MLPs' output `[5][max][32]` fp16 (IoU head first), read by the upscaling.
    heads: TensorId,
    block0: Block0Keys,
    keys: TensorId,
    g: TensorId,
    low_res: TensorId,
    iou: TensorId,
    mask_count: TensorId,
    /// The token->image attention's key-split workspace and its arrival counters (the self
    /// attention, 5..=69 keys, never splits its keys).
    workspace: Option<(TensorId, usize)>,
    /// The folded cross attentions' operands (plans of at most [`FOLD_MAX_TOKENS`] tokens).
    fold: Option<FoldIds>,
}

/// Arena tensors of the folded cross attentions (docs/MOBILESAM.md, "Folded cross attentions").
#[derive(Debug, Clone, Copy)]
struct FoldIds {
    /// Token->image: q folded through k_proj, `[rows * 8, 256]` fp16 (row (b T + t) 8 + h).
    qf: TensorId,
    /// Image->token: k folded through q_proj (`[rows * 8, 256]` fp16) and its bias dots
    /// (`[rows * 8]` f32); v folded through out_proj (`[rows * 8, 256]` fp16).
    kf: TensorId,
    kb: TensorId,
    vf: TensorId,
    /// The folded token->image attention's key-split workspace and its counter slots.
    workspace: Option<(TensorId, usize)>,
}

/// Where block 0's keys come from.
#[derive(Debug, Clone, Copy)]
enum Block0Keys {
    /// No mask input: the embedding for every prompt, projected once into this shared
    /// `[4096, 384]` tensor (read with batch stride 0).
    Shared(TensorId),
    /// Mask inputs (`[max, 256, 256]` f32): `sam_mask_embed` writes each prompt's keys, which
    /// block 0 projects per prompt into `g`.
    MaskInput(TensorId),
}

/// A planned decode: the arena with every intermediate, sized for `config.max_prompts`.
pub struct DecodePlan {
    config: DecodeConfig,
    tokens: usize,
    arena: Arena,
    ids: Ids,
}

impl DecodePlan {
    fn new(gpu: &Gpu, config: DecodeConfig) -> Result<DecodePlan> {
        let b = config.max_prompts;
        if b == 0 || b > 4096 {
            return Err(Error::Plan(format!("max_prompts {b} must be 1..=4096")));
        }
        let points = config.kind.points();
        if points > 64 {
            return Err(Error::Plan(format!("{points} points per prompt exceed 64")));
        }
        let t = OUTPUT_TOKENS + points;
        let c = masks_per_prompt(config.multimask);
        let rows = b * t;
        // The folded attentions and the fused ConvTranspose take one CTA of 160-206 KB of
        // shared memory per SM (sm_90).
        let optin = gpu.kernels().smem_per_block_optin();
        let folded = t <= FOLD_MAX_TOKENS
            && [
                FOLDED_I2T_SMEM_BYTES,
                FOLDED_T2I_SMEM_BYTES,
                CONVT1_SMEM_BYTES,
            ]
            .iter()
            .all(|&bytes| bytes as usize <= optin);
        // Steps: 0 tokens/shared, 1 block 0 image side, 2 block 1 keys, 3 block 1 image side,
        // 4 final keys projection (+ the first ConvTranspose2d) and attention, 6 upscale 2 +
        // masks (reads the final projection's ConvTranspose2d columns). Whole-decode tensors
        // span 0..=6. With mask inputs the per-prompt keys are written at step 0 and block 0
        // projects them into `g` at step 1; the mask inputs are staged before the decode, so
        // they span it all. The token MLP's partials serve blocks 0 and 1 (steps 1..=3).
        let mut p = ArenaPlanner::new();
        let all = |p: &mut ArenaPlanner, name: &str, bytes: usize| p.request(name, bytes, 0, 6);
        let sm = gpu.kernels().sm_count() as usize;
        // One workspace serves the three token->image attentions of decodes of any batch up
        // to the plan's (a smaller batch may split its keys more).
        let (counter_slots, ws) = cross_attention_workspace(b, t, PIXELS, sm)?;
        let ids = Ids {
            prompts: all(&mut p, "prompts", PROMPT_HEADER_BYTES + b * points * 12)?,
            tokens: all(&mut p, "tokens", rows * D * 2)?,
            pe: all(&mut p, "pe_tokens", rows * pe_cols::WIDTH * 2)?,
            queries: all(&mut p, "queries", rows * D * 2)?,
            tok_o: all(&mut p, "token_attention", rows * D * 2)?,
            tq: all(&mut p, "token_q", rows * CROSS * 2)?,
            mlp_partials: p.request("mlp_partials", token_mlp_scratch_bytes(rows), 1, 3)?,
            post: [
                all(&mut p, "post_mlp0", rows * POST_N[0] * 2)?,
                all(&mut p, "post_mlp1", rows * POST_N[1] * 2)?,
            ],
            heads: all(&mut p, "heads", heads_output_bytes(b))?,
            block0: if config.mask_input {
                Block0Keys::MaskInput(all(&mut p, "mask_input", b * MASK_INPUT_PIXELS * 4)?)
            } else {
                let cols = if folded { KEYS_N - CROSS } else { KEYS_N };
                Block0Keys::Shared(p.request("keys_proj_shared", PIXELS * cols * 2, 0, 1)?)
            },
            keys: p.request(
                "keys",
                b * PIXELS * D * 2,
                if config.mask_input { 0 } else { 1 },
                4,
            )?,
            // Block 1's [q_i2t | k | v] (with mask inputs block 0's first), then the final
            // [k | v | convT 1] (read to the end). Folded: the first ConvTranspose2d alone.
            g: if folded {
                p.request("convt1", b * PIXELS * 4 * UP1 * 2, 4, 6)?
            } else {
                p.request(
                    "keys_proj",
                    b * PIXELS * KEYS_N.max(FINAL_N) * 2,
                    if config.mask_input { 1 } else { 2 },
                    6,
                )?
            },
            low_res: all(&mut p, "low_res", b * c * PIXELS * 16 * 4)?,
            iou: all(&mut p, "iou", b * c * 4)?,
            mask_count: all(&mut p, "mask_count", 4)?,
            workspace: if ws > 0 {
                Some((all(&mut p, "cross_attention_workspace", ws)?, counter_slots))
            } else {
                None
            },
            fold: if folded {
                let (fold_slots, fold_ws) = folded_token_to_image_workspace(b, t, PIXELS, sm)?;
                Some(FoldIds {
                    qf: all(&mut p, "fold_q", rows * HEADS_N * D * 2)?,
                    kf: all(&mut p, "fold_k", rows * HEADS_N * D * 2)?,
                    kb: all(&mut p, "fold_k_bias", rows * HEADS_N * 4)?,
                    vf: all(&mut p, "fold_v", rows * HEADS_N * D * 2)?,
                    workspace: if fold_ws > 0 {
                        Some((all(&mut p, "fold_workspace", fold_ws)?, fold_slots))
                    } else {
                        None
                    },
                })
            } else {
                None
            },
        };
        let arena = Arena::allocate(gpu, p.plan())?;
        let plan = DecodePlan {
            config,
            tokens: t,
            arena,
            ids,
        };
        // Once per plan: zero the cross-attention workspace (the kernel keeps its counters
        // zeroed) and the prompt count.
        for (ws, _) in [plan.ids.workspace, plan.ids.fold.and_then(|f| f.workspace)]
            .into_iter()
            .flatten()
        {
            gpu.memset(plan.arena.ptr(ws), 0, plan.arena.bytes(ws))?;
        }
        gpu.memset(
            plan.arena.ptr(plan.ids.prompts),
            0,
            plan.arena.bytes(plan.ids.prompts),
        )?;
        // Mask inputs of prompts never staged are zeros (finite), not arena leftovers.
        if let Block0Keys::MaskInput(id) = plan.ids.block0 {
            gpu.memset(plan.arena.ptr(id), 0, plan.arena.bytes(id))?;
        }
        gpu.synchronize()?;
        // No GEMM tuning and no split-K (H200, 2026-11-27): with both, decodes took 211 / 523 /
        // 1431 us for 1 / 8 / 32 prompts instead of 226 / 523 / 1422, and split-K's other
        // rounding of the MLP's second GEMM (the MLP is `launch_token_mlp` now) moved one
        // marginal multimask mask (2.7 % of the frame, mostly near-threshold pixels) to IoU
        // 0.979, below the parity criterion.
        Ok(plan)
    }

    /// The plan's configuration.
    pub fn config(&self) -> DecodeConfig {
        self.config
    }

    /// Tokens per prompt (5 output tokens + prompt points).
    pub fn tokens_per_prompt(&self) -> usize {
        self.tokens
    }

    /// Whether the cross attentions run folded (at most [`FOLD_MAX_TOKENS`] tokens per prompt).
    pub fn folded(&self) -> bool {
        self.ids.fold.is_some()
    }

    /// Masks per prompt (1, or 3 with multimask).
    pub fn masks_per_prompt(&self) -> usize {
        masks_per_prompt(self.config.multimask)
    }

    /// Bytes of the plan's arena.
    pub fn arena_bytes(&self) -> usize {
        self.arena.peak_bytes()
    }

    /// First column of `[q_i2t | k_t2i | v_t2i]` the shared block-0 keys projection computes:
    /// folded plans need no q_i2t.
    fn shared_first_col(&self) -> usize {
        if self.folded() {
            CROSS
        } else {
            0
        }
    }

    fn region(&self, id: TensorId) -> DeviceRegion {
        DeviceRegion::new(self.arena.ptr(id), self.arena.bytes(id))
    }

    /// The prompt block (u32 count at offset 0, `[max, points, 3]` f32 at offset 16): an
    /// earlier GPU stage (prompt selection) may write it directly.
    pub fn prompt_block(&self) -> DeviceRegion {
        self.region(self.ids.prompts)
    }

    /// Low-res mask logits `[max_prompts, C, 256, 256]` f32 (what mask decoding reads).
    pub fn low_res(&self) -> DeviceRegion {
        self.region(self.ids.low_res)
    }

    /// IoU predictions `[max_prompts, C]` f32.
    pub fn iou(&self) -> DeviceRegion {
        self.region(self.ids.iou)
    }

    /// One u32 written by every decode: masks in use (`min(count, batch) * C`), the
    /// `mask_count` of [`crate::ops::mask::MaskDecodeIo`].
    pub fn mask_count(&self) -> DeviceRegion {
        self.region(self.ids.mask_count)
    }

    /// Validates `prompts` (typed [`Error::Prompt`] for none, too many, non-finite coordinates,
    /// bad labels or the wrong kind) and uploads them into the prompt block (one copy).
    pub fn stage_prompts(&self, gpu: &Gpu, prompts: &Prompts<'_>) -> Result<usize> {
        let bytes = prompts.encode(self.config.kind, self.config.max_prompts)?;
        gpu.upload(self.arena.ptr(self.ids.prompts), &bytes)?;
        Ok(prompts.count())
    }

    /// Validates low-res mask inputs (`[count, 256, 256]` f32, one per prompt in the order of the
    /// prompts: `SamPredictor.predict`'s `mask_input`, typically a previous prediction's low-res
    /// logits) and uploads them into the plan's mask input buffer (one copy); returns `count`.
    /// Typed [`Error::Prompt`] for a plan without mask inputs, no masks, a length that is not
    /// whole masks, more than `max_prompts` or a non-finite value. The caller stages as many
    /// masks as prompts (a prompt past them reuses what an earlier staging left, or zeros).
    pub fn stage_mask_input(&self, gpu: &Gpu, masks: &[f32]) -> Result<usize> {
        let Block0Keys::MaskInput(id) = self.ids.block0 else {
            return Err(Error::Prompt(
                "mask input given to a plan made without mask_input".into(),
            ));
        };
        let count = validate_mask_input(masks, self.config.max_prompts)?;
        gpu.upload(self.arena.ptr(id), bytemuck::cast_slice(masks))?;
        Ok(count)
    }

    /// The mask input buffer (`[max_prompts, 256, 256]` f32) of a plan with mask inputs: an
    /// earlier GPU stage may write it directly (e.g. the low-res logits of a previous decode).
    pub fn mask_input(&self) -> Option<DeviceRegion> {
        match self.ids.block0 {
            Block0Keys::MaskInput(id) => Some(self.region(id)),
            Block0Keys::Shared(_) => None,
        }
    }

    /// Downloads the first `prompts` prompts' low-res logits and IoU predictions (tests and
    /// tools; synchronises).
    pub fn read_outputs(&self, gpu: &Gpu, prompts: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let c = self.masks_per_prompt();
        let n = prompts.min(self.config.max_prompts);
        let mut low = vec![0f32; n * c * PIXELS * 16];
        let mut iou = vec![0f32; n * c];
        gpu.download(
            bytemuck::cast_slice_mut(&mut low),
            self.arena.ptr(self.ids.low_res),
        )?;
        gpu.download(
            bytemuck::cast_slice_mut(&mut iou),
            self.arena.ptr(self.ids.iou),
        )?;
        gpu.synchronize()?;
        Ok((low, iou))
    }

    fn launch(
        &self,
        gpu: &Gpu,
        w: &MaskDecoder,
        embedding: DeviceRegion,
        header: DeviceRegion,
        batch: usize,
        only: Option<DecodePart>,
    ) -> Result<()> {
        let run = |part: DecodePart| only.is_none_or(|o| o == part);
        let max = self.config.max_prompts;
        if batch == 0 || batch > max {
            return Err(Error::Plan(format!(
                "decode batch {batch} must be 1..={max} (the plan's max_prompts)"
            )));
        }
        embedding.check("mask_decoder", "image embedding", Some(PIXELS * D * 2), 16)?;
        let (b, t) = (batch, self.tokens);
        let rows = b * t;
        let ids = &self.ids;
        let r = |id: TensorId| self.region(id);
        let at = |id: TensorId, col: usize| offset(self.region(id), col);
        let workspace = ids
            .workspace
            .map(|(id, counter_slots)| CrossAttentionWorkspace {
                ptr: self.arena.ptr(id),
                bytes: self.arena.bytes(id),
                counter_slots,
            });
        let prompts = r(ids.prompts);
        let pe_w = pe_cols::WIDTH;
        let pe_res = |col: usize| Some((at(ids.pe, col), pe_w, 0usize));
        if run(DecodePart::Prompt) {
            // Block 0's keys (the shared projection of the embedding, or the per-prompt mask
            // embeddings) depend on the image only: side stream, beside the token work.
            gpu.fork_join(
                || {
                    match ids.block0 {
                        // Block 0's keys are the embedding for every prompt: project once.
                        // Folded plans skip q_i2t (the folded image->token attention reads
                        // the keys).
                        Block0Keys::Shared(g0) => {
                            let l0 = &w.layers[0];
                            let first = self.shared_first_col();
                            gemm(
                                gpu,
                                PIXELS,
                                KEYS_N - first,
                                D,
                                (embedding, D),
                                (offset(l0.keys.0, first * D), 0),
                                (r(g0), KEYS_N - first),
                                Some(offset_bytes(l0.keys.1, first * 4)),
                                Activation::None,
                                Some((offset(l0.keys_pe, first), KEYS_N, 0)),
                            )?;
                        }
                        // Each prompt's keys: embedding + mask_downscaling(mask).
                        Block0Keys::MaskInput(mask) => launch_mask_embed(
                            gpu,
                            &MaskEmbedArgs {
                                batch: b,
                                mask: r(mask),
                                params: w.mask.params,
                                embedding,
                                y: r(ids.keys),
                            },
                        )?,
                    }
                    Ok(())
                },
                || {
                    launch_prompt_encode(
                        gpu,
                        &PromptEncodeArgs {
                            batch: b,
                            points: t - OUTPUT_TOKENS,
                            count: prompts,
                            prompts: offset_bytes(prompts, PROMPT_HEADER_BYTES),
                            header,
                            gauss: w.gauss,
                            label_embed: w.labels,
                            output_tokens: w.output_tokens,
                            tokens: r(ids.tokens),
                        },
                    )?;
                    // query_pe projections for every layer, and block 0's qkv projection.
                    gemm(
                        gpu,
                        rows,
                        pe_w,
                        D,
                        (r(ids.tokens), D),
                        (w.pe_tokens.0, 0),
                        (r(ids.pe), pe_w),
                        Some(w.pe_tokens.1),
                        Activation::None,
                        None,
                    )?;
                    Ok(())
                },
            )?;
        }

        let scale16 = 1.0 / (CROSS as f32 / HEADS_N as f32).sqrt();
        let scale32 = 1.0 / (D as f32 / HEADS_N as f32).sqrt();
        let tokens_of = |id: TensorId, col: usize, stride: usize, hd: usize| HeadsTensor {
            ptr: at(id, col).ptr,
            bytes: at(id, col).bytes,
            batch_stride: t * stride,
            token_stride: stride,
            head_stride: hd,
        };
        let cross_rows = |id: TensorId, col: usize, stride: usize| CrossRows {
            region: at(id, col),
            token_stride: stride,
            batch_stride: t * stride,
        };
        let self_attention = |q, k, v, o| {
            launch_attention(
                gpu,
                &Attention {
                    batch: b,
                    heads: HEADS_N,
                    q_len: t,
                    kv_len: t,
                    head_dim: D / HEADS_N,
                    scale: scale32,
                    q,
                    k,
                    v,
                    o,
                    bias: None,
                    workspace: None,
                },
            )
        };
        let queries = r(ids.queries);
        // queries = LayerNorm(x @ out^T + b (+ queries)): an attention's out_proj, residual and
        // norm in one launch (x = the attention output, k columns).
        let out_norm = |k: usize,
                        out: (DeviceRegion, DeviceRegion),
                        residual: bool,
                        norm: (DeviceRegion, DeviceRegion)| {
            launch_token_linear(
                gpu,
                &TokenLinearArgs {
                    rows,
                    k,
                    x: r(ids.tok_o),
                    weight: out.0,
                    bias: out.1,
                    residual: residual.then_some(queries),
                    norm,
                    eps: LN_EPS,
                    y: queries,
                },
            )
        };
        // Token -> image: q from the tokens (+ its pe slice), k/v at columns k_col and
        // k_col + 128 of a keys projection (row stride, shared over prompts or not) in
        // `sam_cross_attention`, then out_proj with the queries as residual and the LayerNorm.
        // q_proj None: q was computed by block 1's post-MLP GEMM (the final attention).
        let token_to_image = |q_proj: Option<((DeviceRegion, DeviceRegion), usize)>,
                              (g, stride, k_col, shared): (DeviceRegion, usize, usize, bool),
                              out: (DeviceRegion, DeviceRegion),
                              norm: (DeviceRegion, DeviceRegion)|
         -> Result<()> {
            let q = match q_proj {
                Some((q_proj, q_col)) => {
                    gemm(
                        gpu,
                        rows,
                        CROSS,
                        D,
                        (queries, D),
                        (q_proj.0, 0),
                        (r(ids.tq), CROSS),
                        Some(q_proj.1),
                        Activation::None,
                        pe_res(q_col),
                    )?;
                    cross_rows(ids.tq, 0, CROSS)
                }
                None => cross_rows(ids.post[1], 2 * CROSS, POST_N[1]),
            };
            launch_cross_attention(
                gpu,
                &CrossAttentionArgs {
                    prompts: b,
                    tokens: t,
                    keys: PIXELS,
                    scale: scale16,
                    q,
                    k: offset(g, k_col),
                    v: offset(g, k_col + CROSS),
                    kv_token_stride: stride,
                    kv_batch_stride: if shared { 0 } else { PIXELS * stride },
                    o: cross_rows(ids.tok_o, 0, CROSS),
                    workspace,
                },
            )?;
            out_norm(CROSS, out, true, norm)
        };
        // Folded token -> image (plans of <= FOLD_MAX_TOKENS tokens): `fold_q` turns q rows (x,
        // stride) into Qf = scale q_h W_k,h (W_k the k_proj weight); `folded_token_to_image`
        // then runs softmax(Qf (keys + pe)^T) keys W_v^T + b_v over the per-prompt keys (W_v, b_v
        // the v_proj weight and bias); out_proj + residual + norm follow (`out_norm`).
        let fold_q = |(q, q_stride): (DeviceRegion, usize), wk: DeviceRegion| -> Result<()> {
            let Some(f) = ids.fold else {
                return Err(Error::Plan("folded attention in an unfolded plan".into()));
            };
            launch_head_fold(
                gpu,
                rows,
                &[HeadFold {
                    x: q,
                    x_stride: q_stride,
                    weight: wk,
                    bias: None,
                    scale: scale16,
                    y: r(f.qf),
                }],
            )
        };
        let folded_token_to_image = |(wv, bv): (DeviceRegion, DeviceRegion)| -> Result<()> {
            let Some(f) = ids.fold else {
                return Err(Error::Plan("folded attention in an unfolded plan".into()));
            };
            launch_folded_token_to_image(
                gpu,
                &FoldedTokenToImageArgs {
                    prompts: b,
                    tokens: t,
                    keys: PIXELS,
                    scale: 1.0,
                    qf: r(f.qf),
                    qf_batch_stride: HEADS_N * t * D,
                    x: r(ids.keys),
                    x_batch_stride: PIXELS * D,
                    pe: w.pe_image,
                    wv,
                    bv,
                    o: cross_rows(ids.tok_o, 0, CROSS),
                    workspace: f
                        .workspace
                        .map(|(id, counter_slots)| CrossAttentionWorkspace {
                            ptr: self.arena.ptr(id),
                            bytes: self.arena.bytes(id),
                            counter_slots,
                        }),
                },
            )
        };
        // Folded image -> token: keys = norm4(x + softmax_t((x + pe) Kf^T + kb) Vf + b_o) over
        // the factors of one `launch_head_fold` (x: the shared embedding or the keys in place).
        // `spare_sms`: SMs left to work on the side stream (see `launch_folded_image_to_token`).
        let folded_image_to_token = |(x, x_batch): (DeviceRegion, usize),
                                     f: FoldIds,
                                     bias: DeviceRegion,
                                     norm: (DeviceRegion, DeviceRegion),
                                     spare_sms: usize|
         -> Result<()> {
            launch_folded_image_to_token(
                gpu,
                &FoldedImageToTokenArgs {
                    prompts: b,
                    tokens: t,
                    pixels: PIXELS,
                    x,
                    x_batch,
                    pe: w.pe_image,
                    kf: r(f.kf),
                    kb: r(f.kb),
                    kb_batch: HEADS_N * t,
                    vf: r(f.vf),
                    f_batch: HEADS_N * t * D,
                    out_bias: bias,
                    norm,
                    eps: LN_EPS,
                    y: r(ids.keys),
                    spare_sms,
                },
            )
        };
        // Whether block l's token->image attention runs folded (block 0 without mask inputs
        // reads the shared keys projection instead).
        let folded_t2i_in = |l: usize| {
            ids.fold.is_some() && !(l == 0 && matches!(ids.block0, Block0Keys::Shared(_)))
        };
        // The start of block l, which does not read the keys: the self attention, its out_proj +
        // norm1 and, when the token->image attention runs folded, its q GEMM and Qf. Its qkv
        // projection was computed ahead: block 0's (of the tokens, no PE, no residual) by the
        // token GEMM (columns L0_QKV.. of the pe buffer), block 1's by block 0's post-MLP GEMM
        // (columns 256.. of post[0]).
        let token_prefix = |l: usize| -> Result<()> {
            let lw = &w.layers[l];
            let (qkv_id, qkv_col, qkv_stride) = if l == 0 {
                (ids.pe, pe_cols::L0_QKV, pe_w)
            } else {
                (ids.post[0], 2 * CROSS, POST_N[0])
            };
            let qkv =
                |which: usize| tokens_of(qkv_id, qkv_col + which * D, qkv_stride, D / HEADS_N);
            let o = tokens_of(ids.tok_o, 0, D, D / HEADS_N);
            self_attention(qkv(0), qkv(1), qkv(2), o)?;
            // Block 0 (skip_first_layer_pe) replaces the queries by the attention output: no
            // residual.
            out_norm(D, lw.self_out, l == 1, lw.norms[0])?;
            if folded_t2i_in(l) {
                // q (with its pe slice) -> Qf = q_h W_k,h (rows 128.. of [q_i2t | k | v]).
                gemm(
                    gpu,
                    rows,
                    CROSS,
                    D,
                    (queries, D),
                    (lw.t2i_q.0, 0),
                    (r(ids.tq), CROSS),
                    Some(lw.t2i_q.1),
                    Activation::None,
                    pe_res([pe_cols::T2I_Q0, pe_cols::T2I_Q1][l]),
                )?;
                fold_q((r(ids.tq), CROSS), offset(lw.keys.0, CROSS * D))?;
            }
            Ok(())
        };
        // The final attention's Qf (from block 1's post-MLP GEMM, k_proj rows 0.. of [k | v |
        // convT 1]).
        let final_fold_q = || fold_q((at(ids.post[1], 2 * CROSS), POST_N[1]), w.last.keys.0);
        // Token work issued ahead on the side stream beside an image->token attention: block 1's
        // prefix (beside block 0's), the final Qf (beside block 1's).
        let mut block1_prefix_done = false;
        let mut final_q_done = false;
        for (l, lw) in w.layers.iter().enumerate() {
            if !run([DecodePart::Block0, DecodePart::Block1][l]) {
                continue;
            }
            if !(l == 1 && block1_prefix_done) {
                token_prefix(l)?;
            }

            // Token -> image. Block 0 without mask inputs reads the shared projection of the
            // embedding; otherwise the block first projects its own (per-prompt) keys. Block 0
            // with mask inputs uses the biases without `no_mask_embed` folded in.
            let shared = match (l, ids.block0) {
                (0, Block0Keys::Shared(g0)) => Some(g0),
                _ => None,
            };
            let (keys_b, i2t_out) = if l == 0 && shared.is_none() {
                (w.mask.keys_b, (lw.i2t_out.0, w.mask.i2t_out_b))
            } else {
                (lw.keys.1, lw.i2t_out)
            };
            let folded_t2i = folded_t2i_in(l);
            let (g, shared) = if let Some(g0) = shared {
                (r(g0), true)
            } else if folded_t2i {
                (r(ids.keys), false)
            } else {
                let gx = Matrix::packed(r(ids.keys), D).with_batch_stride(PIXELS * D);
                let gy = Matrix::packed(r(ids.g), KEYS_N).with_batch_stride(PIXELS * KEYS_N);
                gemm_batched(
                    gpu,
                    GemmProblem {
                        m: PIXELS,
                        n: KEYS_N,
                        k: D,
                        batch: b,
                    },
                    gx,
                    Matrix::packed(lw.keys.0, D),
                    gy,
                    Some(keys_b),
                    Activation::None,
                    Some(Matrix::packed(lw.keys_pe, KEYS_N)),
                )?;
                (r(ids.g), false)
            };
            let q_col = if l == 0 {
                pe_cols::T2I_Q0
            } else {
                pe_cols::T2I_Q1
            };
            if folded_t2i {
                // Folded (Qf from the prefix): attention over keys + pe, v_proj, out_proj, norm2.
                folded_token_to_image((
                    offset(lw.keys.0, 2 * CROSS * D),
                    offset_bytes(keys_b, 2 * CROSS * 4),
                ))?;
                out_norm(CROSS, lw.t2i_out, true, lw.norms[1])?;
            } else {
                let first = if shared { self.shared_first_col() } else { 0 };
                token_to_image(
                    Some((lw.t2i_q, q_col)),
                    (g, KEYS_N - first, CROSS - first, shared),
                    lw.t2i_out,
                    lw.norms[1],
                )?;
            }

            // MLP (ReLU: TwoWayTransformer's default activation) + residual + norm3, in place.
            launch_token_mlp(
                gpu,
                &TokenMlpArgs {
                    rows,
                    x: queries,
                    lin1: lw.lin1,
                    lin2: lw.lin2,
                    norm: lw.norms[2],
                    eps: LN_EPS,
                    scratch: r(ids.mlp_partials),
                    y: queries,
                },
            )?;

            // Image -> token: queries are the image pixels. One GEMM gives its token k/v and
            // what else reads these queries next (block 1's qkv, or the final attention's q).
            let kv_col = if l == 0 {
                pe_cols::I2T_KV0
            } else {
                pe_cols::I2T_KV1
            };
            gemm(
                gpu,
                rows,
                POST_N[l],
                D,
                (queries, D),
                (lw.post.0, 0),
                (r(ids.post[l]), POST_N[l]),
                Some(lw.post.1),
                Activation::None,
                pe_res(kv_col),
            )?;
            // keys = LN(keys + out_proj(attention)) in one kernel; block 0's residual is the
            // shared embedding (no mask input), otherwise the keys themselves (in place).
            let (residual, residual_batch) = if shared {
                (embedding, 0)
            } else {
                (r(ids.keys), PIXELS * D)
            };
            if let Some(f) = ids.fold {
                // Folded: Kf = scale W_q,h^T k_h (+ the bias dots), Vf = W_o,h v_h in one
                // launch, then the attention, out_proj bias, residual and norm4 in one kernel.
                let post = r(ids.post[l]);
                launch_head_fold(
                    gpu,
                    rows,
                    &[
                        HeadFold {
                            x: post,
                            x_stride: POST_N[l],
                            weight: lw.keys.0,
                            bias: Some((keys_b, r(f.kb))),
                            scale: scale16,
                            y: r(f.kf),
                        },
                        HeadFold {
                            x: offset(post, CROSS),
                            x_stride: POST_N[l],
                            weight: lw.i2t_out_t,
                            bias: None,
                            scale: 1.0,
                            y: r(f.vf),
                        },
                    ],
                )?;
                let attend = |spare_sms| {
                    folded_image_to_token(
                        (residual, residual_batch),
                        f,
                        i2t_out.1,
                        lw.norms[3],
                        spare_sms,
                    )
                };
                // The attention takes one SM per CTA: leave a few to the token work beside it.
                if l == 0 && run(DecodePart::Block1) {
                    gpu.fork_join(|| token_prefix(1), || attend(SPARE_SMS))?;
                    block1_prefix_done = true;
                } else if l == 1 && run(DecodePart::Final) {
                    gpu.fork_join(final_fold_q, || attend(SPARE_SMS))?;
                    final_q_done = true;
                } else {
                    attend(0)?;
                }
                continue;
            }
            launch_image_to_token(
                gpu,
                &ImageToTokenArgs {
                    batch: b,
                    tokens: t,
                    q: g,
                    q_stride: KEYS_N,
                    q_batch: if shared { 0 } else { PIXELS * KEYS_N },
                    kv: r(ids.post[l]),
                    kv_stride: POST_N[l],
                    out: i2t_out,
                    residual,
                    residual_batch,
                    norm: lw.norms[3],
                    scale: scale16,
                    eps: LN_EPS,
                    y: r(ids.keys),
                },
            )?;
        }

        // Heads: the 5 MLPs (0 = IoU on token 0, 1..5 = hypernetworks on tokens 1..5) in one
        // launch, output [5][max][32] as the upscaling reads it.
        let heads = || {
            launch_heads(
                gpu,
                &HeadsArgs {
                    prompts: b,
                    tokens: t,
                    queries,
                    layers: w.heads,
                    stride: max,
                    y: r(ids.heads),
                },
            )
        };
        let mut heads_done = false;
        // Final token -> image attention (and the first ConvTranspose2d).
        if run(DecodePart::Final) && ids.fold.is_some() {
            // Folded: the first ConvTranspose2d alone (rows 256.. of the final keys weight
            // [k | v | convT 1]) with its LayerNorm2d and GELU (`sam_convt1_ln_gelu`), and the
            // attention: Qf from the final q (block 1's post-MLP GEMM), the attention over the
            // final keys, out_proj + norm. Both only read the keys; they write `g` and the token
            // tensors, so the ConvTranspose runs on the side stream.
            let f = &w.last;
            let convt1 = |spare_sms| {
                launch_convt1_ln_gelu(
                    gpu,
                    &ConvT1Args {
                        rows: b * PIXELS,
                        x: r(ids.keys),
                        weight: offset(f.keys.0, FINAL_UP1 * D),
                        bias: offset_bytes(f.keys.1, FINAL_UP1 * 4),
                        ln: w.up1_ln,
                        eps: LN2D_EPS,
                        y: r(ids.g),
                        spare_sms,
                    },
                )
            };
            let attend = || -> Result<()> {
                if !final_q_done {
                    final_fold_q()?;
                }
                folded_token_to_image((
                    offset(f.keys.0, CROSS * D),
                    offset_bytes(f.keys.1, CROSS * 4),
                ))
            };
            let out_norm_final = || out_norm(CROSS, f.out, true, f.norm);
            let sm = gpu.kernels().sm_count() as usize;
            let t2i_ctas = plan_folded_token_to_image(b, t, PIXELS, sm)?.chunks * b;
            if t2i_ctas + convt1_ctas(b * PIXELS, sm, 0) <= sm {
                // Both fit on the SMs at once (small batches): side by side.
                gpu.fork_join(|| convt1(0), || attend().and_then(|()| out_norm_final()))?;
            } else {
                // Each takes one CTA per SM, so they would take turns anyway: the attention
                // first, then the ConvTranspose (leaving a few SMs) beside the token tail,
                // out_proj + norm and the heads.
                attend()?;
                gpu.fork_join(
                    || convt1(SPARE_SMS),
                    || {
                        out_norm_final()?;
                        if run(DecodePart::Heads) {
                            heads()?;
                            heads_done = true;
                        }
                        Ok(())
                    },
                )?;
            }
        } else if run(DecodePart::Final) {
            let f = &w.last;
            let gx = Matrix::packed(r(ids.keys), D).with_batch_stride(PIXELS * D);
            let gy = Matrix::packed(r(ids.g), FINAL_N).with_batch_stride(PIXELS * FINAL_N);
            gemm_batched(
                gpu,
                GemmProblem {
                    m: PIXELS,
                    n: FINAL_N,
                    k: D,
                    batch: b,
                },
                gx,
                Matrix::packed(f.keys.0, D),
                gy,
                Some(f.keys.1),
                Activation::None,
                Some(Matrix::packed(f.keys_pe, FINAL_N)),
            )?;
            token_to_image(None, (r(ids.g), FINAL_N, 0, false), f.out, f.norm)?;
        }

        if run(DecodePart::Heads) && !heads_done {
            heads()?;
        }

        // Output upscaling: the first ConvTranspose2d came with the final keys projection
        // (columns FINAL_UP1..); one kernel does the rest and the masks.
        if run(DecodePart::UpscaleMasks) {
            launch_upscale_masks(
                gpu,
                &UpscaleMaskArgs {
                    batch: b,
                    stride: max,
                    multimask: self.config.multimask,
                    up1: if self.folded() {
                        r(ids.g)
                    } else {
                        at(ids.g, FINAL_UP1)
                    },
                    up1_ld: if self.folded() { 4 * UP1 } else { FINAL_N },
                    normalized: self.folded(),
                    ln: w.up1_ln,
                    eps: LN2D_EPS,
                    w2: w.up2.0,
                    b2: w.up2.1,
                    heads: r(ids.heads),
                    count: prompts,
                    low_res: r(ids.low_res),
                    iou: r(ids.iou),
                    mask_count: r(ids.mask_count),
                },
            )?;
        }
        Ok(())
    }
}

/// `region` advanced by `col` fp16 elements.
fn offset(region: DeviceRegion, col: usize) -> DeviceRegion {
    offset_bytes(region, col * 2)
}

fn offset_bytes(region: DeviceRegion, bytes: usize) -> DeviceRegion {
    DeviceRegion::new(
        region.ptr + bytes as DevicePtr,
        region.bytes.saturating_sub(bytes),
    )
}

/// A non-batched GEMM: operands as (region, row stride); the weight row stride 0 means K.
#[allow(clippy::too_many_arguments)]
fn gemm(
    gpu: &Gpu,
    m: usize,
    n: usize,
    k: usize,
    x: (DeviceRegion, usize),
    w: (DeviceRegion, usize),
    y: (DeviceRegion, usize),
    bias: Option<DeviceRegion>,
    activation: Activation,
    residual: Option<(DeviceRegion, usize, usize)>,
) -> Result<()> {
    let w_stride = if w.1 == 0 { k } else { w.1 };
    launch_gemm(
        gpu,
        &GemmProblem::new(m, n, k),
        &GemmArgs {
            x: Matrix::packed(x.0, x.1),
            w: Matrix::packed(w.0, w_stride),
            y: Matrix::packed(y.0, y.1),
            epilogue: Epilogue {
                bias,
                activation,
                residual: residual.map(|(region, stride, batch_stride)| Residual {
                    matrix: Matrix::packed(region, stride).with_batch_stride(batch_stride),
                    order: ResidualOrder::AfterActivation,
                }),
                ..Epilogue::default()
            },
        },
    )
}

/// A batched GEMM with a residual added after the activation.
#[allow(clippy::too_many_arguments)]
fn gemm_batched(
    gpu: &Gpu,
    problem: GemmProblem,
    x: Matrix,
    w: Matrix,
    y: Matrix,
    bias: Option<DeviceRegion>,
    activation: Activation,
    residual: Option<Matrix>,
) -> Result<()> {
    launch_gemm(
        gpu,
        &problem,
        &GemmArgs {
            x,
            w,
            y,
            epilogue: Epilogue {
                bias,
                activation,
                residual: residual.map(|matrix| Residual {
                    matrix,
                    order: ResidualOrder::AfterActivation,
                }),
                ..Epilogue::default()
            },
        },
    )
}

/// Uploads an image embedding given as NCHW `[256, 64, 64]` f32 (the official layout) as the
/// NHWC fp16 `[64, 64, 256]` the decoder reads (tests and tools; the image encoder writes
/// NHWC directly).
pub fn upload_embedding_nchw(gpu: &Gpu, nchw: &[f32]) -> Result<DeviceBuffer> {
    if nchw.len() != D * PIXELS {
        return Err(Error::Plan(format!(
            "image embedding has {} values, expected 256 x 64 x 64",
            nchw.len()
        )));
    }
    let mut nhwc = vec![f16::ZERO; D * PIXELS];
    for c in 0..D {
        for p in 0..PIXELS {
            nhwc[p * D + c] = f16::from_f32(nchw[c * PIXELS + p]);
        }
    }
    let buffer = gpu.alloc(nhwc.len() * 2)?;
    gpu.upload(buffer.ptr(), bytemuck::cast_slice(&nhwc))?;
    Ok(buffer)
}
