//! Criterion benchmarks of the MobileSAM mask decoder's dedicated kernels at the decoder's real
//! shapes (GPU time from CUDA events, `Gpu::time_ms` inside `iter_custom`). Each case prints one
//! line with its time and achieved rate. Skips with a printed reason without a GPU.
//!
//! - `launch_cross_attention` (kernels/sam_cross_attention.cu): token -> image attention, T = 7
//!   tokens (5 output + 2 box corners) per prompt, 8 and 32 prompts, 4096 keys of 8 heads x 16,
//!   k and v read from a keys projection of row stride 384 (k at column 128, v at 256), as
//!   blocks 0 and 1 do; keys shared over the prompts (batch stride 0) or per prompt; the key
//!   split workspace the plan asks for. Prints TFLOP/s of useful flops (4 x prompts x 8 heads x
//!   T x 4096 x 16) and GB/s of k/v bytes read (4096 keys x 256 halves = 2 MiB per prompt, once
//!   when shared).
//! - `launch_folded_token_to_image` (kernels/sam_folded_t2i.cu): the same attention with the key
//!   projection folded into the queries (Qf rows of 256 per token and head, K = X + PE, V = X,
//!   Wv/bv applied per head), T = 7, 8 and 32 prompts, 4096 keys, X per prompt. Prints TFLOP/s
//!   of the padded flops the kernel issues (2 x 2 x prompts x 64 rows x 4096 x 256) and GB/s of
//!   X bytes read (2 MiB per prompt; PE's 2 MiB are L2 hits after the first prompt).
//! - `launch_token_linear` (kernels/sam_tokens.cu `sam_token_linear_ln`): out_proj + residual +
//!   LayerNorm, K = 256 (the token self-attention's), rows 7, 56, 224 (1, 8, 32 prompts of 7
//!   tokens), residual in place in the output as the decoder runs it.
//! - `launch_token_mlp` (`sam_token_mlp_<tile>` + `sam_token_mlp_norm`): 256 -> 2048 -> 256 +
//!   residual + LayerNorm, in place, rows 7, 56, 224.
//! - `launch_heads` (kernels/sam_heads.cu): the IoU head and 4 hypernetwork MLPs, 8 and 32
//!   prompts of 7 tokens.
//! - `launch_folded_image_to_token` (kernels/sam_folded_i2t.cu): image -> token attention with
//!   q folded into the tokens + out_proj + residual + norm4, 8 and 32 prompts, T = 7, N = 4096,
//!   per-prompt X in place. Prints TFLOP/s of the two products (2 x 2 x N x 8T x 256 per prompt)
//!   and GB/s of X read + Y written (4 MiB per prompt; PE, L2-resident, not counted).
//! - `launch_head_fold` (kernels/sam_tokens.cu `sam_head_fold`): the folded attentions' token
//!   factors, two folds per launch (Kf with the bias dots, Vf) as before an image->token
//!   attention, rows 56 and 224; GB/s of compulsory bytes (x rows, both weights, outputs).
//! - `launch_convt1_ln_gelu` (kernels/sam_decoder.cu `sam_convt1_ln_gelu`): the first
//!   ConvTranspose2d + LayerNorm2d + GELU over 8 and 32 prompts' final keys (4096 x 256 each);
//!   TFLOP/s of the GEMM (2 x rows x 256 x 256) and GB/s of x read + y written.
//!
//! Token linear / MLP / heads print GB/s of compulsory bytes: every weight and bias read once,
//! the rows read and written once (the MLP's f32 partial-product scratch and the heads' weight
//! re-reads per 16-prompt tile are not counted). Repeated launches find the weights (at most
//! 2 MiB) in L2, so these rates may exceed HBM bandwidth (~3.0 TB/s H100, ~4.3 TB/s H200).

mod common;

use common::{criterion_gpu_case, f32_buffer, filled, region};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use finesam::gpu::DeviceBuffer;
use finesam::ops::sam_cross_attention::{
    cross_attention_workspace, launch_cross_attention, plan_cross_attention, CrossAttentionArgs,
    CrossAttentionWorkspace, CrossRows, CROSS_HEADS, CROSS_HEAD_DIM, CROSS_WIDTH,
};
use finesam::ops::sam_decoder::{launch_convt1_ln_gelu, ConvT1Args};
use finesam::ops::sam_folded_i2t::{
    launch_folded_image_to_token, FoldedImageToTokenArgs, FOLDED_DIM, FOLDED_HEADS,
};
use finesam::ops::sam_folded_t2i::{
    folded_token_to_image_workspace, launch_folded_token_to_image, plan_folded_token_to_image,
    FoldedTokenToImageArgs, FOLDED_OUT,
};
use finesam::ops::sam_heads::{
    heads_output_bytes, launch_heads, HeadsArgs, HEAD_HIDDEN, HEAD_MLPS, HEAD_OUT,
};
use finesam::ops::sam_tokens::{
    launch_head_fold, launch_token_linear, launch_token_mlp, select_token_mlp_tile,
    token_mlp_scratch_bytes, token_mlp_tile_rows, HeadFold, TokenLinearArgs, TokenMlpArgs,
    FOLD_HEADS, FOLD_HEAD_DIM, TOKEN_DIM, TOKEN_MLP_HIDDEN,
};
use finesam::ops::DeviceRegion;
use finesam::{Gpu, Result};

/// Repetitions per printed measurement.
const REPS: usize = 200;
/// Decoder tokens per prompt: 5 output tokens + 2 box corners.
const TOKENS: usize = 7;
/// Image tokens (64 x 64).
const KEYS: usize = 4096;
/// Row stride and k column of the blocks' keys projection `[q_i2t | k | v]`.
const KV_STRIDE: usize = 384;
const K_COL: usize = 128;
const LN_EPS: f32 = 1e-5;

/// `buffer` from half `column` on.
fn from_column(buffer: &DeviceBuffer, column: usize) -> DeviceRegion {
    DeviceRegion::new(buffer.ptr() + 2 * column as u64, buffer.len() - 2 * column)
}

/// Times `work`, prints `rates` of the time (seconds) after it, and registers it with
/// criterion.
fn bench_case(
    c: &mut Criterion,
    gpu: &Gpu,
    name: &str,
    rates: impl Fn(f64) -> String,
    mut work: impl FnMut() -> Result<()>,
) {
    work().expect("launch");
    gpu.synchronize().expect("sync");
    let ms = gpu.time_ms(REPS, &mut work).expect("timing");
    println!("{name:<44} {:>8.2} us  {}", ms * 1e3, rates(ms * 1e-3));
    criterion_gpu_case(c, gpu, name, work);
}

/// A zeroed key-split workspace of `(counter_slots, bytes)` as the token->image attentions'
/// workspace functions return it (the buffer keeps it alive); None when nothing splits.
fn zeroed_workspace(
    gpu: &Gpu,
    (counter_slots, bytes): (usize, usize),
) -> Option<(DeviceBuffer, CrossAttentionWorkspace)> {
    if bytes == 0 {
        return None;
    }
    let buffer = gpu.alloc(bytes).expect("device allocation");
    gpu.memset(buffer.ptr(), 0, bytes).expect("memset");
    let ws = CrossAttentionWorkspace {
        ptr: buffer.ptr(),
        bytes,
        counter_slots,
    };
    Some((buffer, ws))
}

fn cross_attention(c: &mut Criterion, gpu: &Gpu) {
    const MAX_PROMPTS: usize = 32;
    let sm = gpu.kernels().sm_count() as usize;
    // One workspace for every launch below, counters zeroed once (the kernel leaves them 0).
    let ws = zeroed_workspace(
        gpu,
        cross_attention_workspace(MAX_PROMPTS, TOKENS, KEYS, sm).expect("workspace size"),
    );
    let workspace = ws.as_ref().map(|(_, w)| *w);
    // Scores q.k / 4 with q, k in [-2, 2], v in [-1, 1] (k and v columns of one buffer).
    let q = filled(gpu, MAX_PROMPTS * TOKENS * CROSS_WIDTH, 2.0);
    let kv = filled(gpu, MAX_PROMPTS * KEYS * KV_STRIDE, 2.0);
    let o = gpu
        .alloc(MAX_PROMPTS * TOKENS * CROSS_WIDTH * 2)
        .expect("device allocation");
    for prompts in [8usize, 32] {
        for shared in [true, false] {
            let args = CrossAttentionArgs {
                prompts,
                tokens: TOKENS,
                keys: KEYS,
                scale: (CROSS_HEAD_DIM as f32).powf(-0.5),
                q: CrossRows {
                    region: region(&q),
                    token_stride: CROSS_WIDTH,
                    batch_stride: TOKENS * CROSS_WIDTH,
                },
                k: from_column(&kv, K_COL),
                v: from_column(&kv, K_COL + CROSS_WIDTH),
                kv_token_stride: KV_STRIDE,
                kv_batch_stride: if shared { 0 } else { KEYS * KV_STRIDE },
                o: CrossRows {
                    region: region(&o),
                    token_stride: CROSS_WIDTH,
                    batch_stride: TOKENS * CROSS_WIDTH,
                },
                workspace,
            };
            let plan = plan_cross_attention(prompts, TOKENS, KEYS, sm).expect("plan");
            let flops = (4 * prompts * CROSS_HEADS * TOKENS * KEYS * CROSS_HEAD_DIM) as f64;
            let kv_sets = if shared { 1 } else { prompts };
            let kv_bytes = (kv_sets * KEYS * 2 * CROSS_WIDTH * 2) as f64;
            let name = format!(
                "cross_attention_b{prompts}_t{TOKENS}_k{KEYS}_{}",
                if shared {
                    "shared_keys"
                } else {
                    "per_prompt_keys"
                }
            );
            bench_case(
                c,
                gpu,
                &name,
                |s| {
                    format!(
                        "{:>6.2} TFLOP/s  {:>6.0} GB/s k/v  ({} chunks x {} stages)",
                        flops / s * 1e-12,
                        kv_bytes / s * 1e-9,
                        plan.chunks,
                        plan.tiles_per_chunk
                    )
                },
                || launch_cross_attention(gpu, &args).map(|_| ()),
            );
        }
    }
}

fn folded_token_to_image(c: &mut Criterion, gpu: &Gpu) {
    const MAX_PROMPTS: usize = 32;
    let sm = gpu.kernels().sm_count() as usize;
    let ws = zeroed_workspace(
        gpu,
        folded_token_to_image_workspace(MAX_PROMPTS, TOKENS, KEYS, sm).expect("workspace size"),
    );
    let workspace = ws.as_ref().map(|(_, w)| *w);
    let rows = TOKENS * FOLDED_HEADS;
    // Qf in [-0.5, 0.5], x and pe in [-2, 2]: scores of std ~2; Wv in [-1/16, 1/16].
    let qf = filled(gpu, MAX_PROMPTS * rows * FOLDED_DIM, 0.5);
    let x = filled(gpu, MAX_PROMPTS * KEYS * FOLDED_DIM, 2.0);
    let pe = filled(gpu, KEYS * FOLDED_DIM, 2.0);
    let wv = filled(gpu, FOLDED_OUT * FOLDED_DIM, 1.0 / 16.0);
    let bv = f32_buffer(gpu, FOLDED_OUT, 0.01);
    let o = gpu
        .alloc(MAX_PROMPTS * TOKENS * FOLDED_OUT * 2)
        .expect("device allocation");
    for prompts in [8usize, 32] {
        let args = FoldedTokenToImageArgs {
            prompts,
            tokens: TOKENS,
            keys: KEYS,
            scale: (CROSS_HEAD_DIM as f32).powf(-0.5),
            qf: region(&qf),
            qf_batch_stride: rows * FOLDED_DIM,
            x: region(&x),
            x_batch_stride: KEYS * FOLDED_DIM,
            pe: region(&pe),
            wv: region(&wv),
            bv: region(&bv),
            o: CrossRows {
                region: region(&o),
                token_stride: FOLDED_OUT,
                batch_stride: TOKENS * FOLDED_OUT,
            },
            workspace,
        };
        let plan = plan_folded_token_to_image(prompts, TOKENS, KEYS, sm).expect("plan");
        let flops = (2 * 2 * prompts * 64 * KEYS * FOLDED_DIM) as f64;
        let x_bytes = (prompts * KEYS * FOLDED_DIM * 2) as f64;
        let name = format!("folded_t2i_b{prompts}_t{TOKENS}_k{KEYS}_per_prompt_x");
        bench_case(
            c,
            gpu,
            &name,
            |s| {
                format!(
                    "{:>6.2} TFLOP/s  {:>6.0} GB/s x  ({} chunks x {} stages)",
                    flops / s * 1e-12,
                    x_bytes / s * 1e-9,
                    plan.chunks,
                    plan.tiles_per_chunk
                )
            },
            || launch_folded_token_to_image(gpu, &args),
        );
    }
}

fn token_ops(c: &mut Criterion, gpu: &Gpu) {
    const MAX_ROWS: usize = 224;
    const K: usize = 256;
    let d = TOKEN_DIM;
    let x = filled(gpu, MAX_ROWS * K, 1.0);
    let y = filled(gpu, MAX_ROWS * d, 1.0);
    let norm_w = f32_buffer(gpu, d, 1.0);
    let norm_b = f32_buffer(gpu, d, 0.0);
    let norm = (region(&norm_w), region(&norm_b));
    // out_proj of the token self-attention: [256, 256] fp16.
    let w = filled(gpu, d * K, 0.06);
    let b = f32_buffer(gpu, d, 0.1);
    // MLP: lin1 [2048, 256], lin2 [256, 2048]; amplitudes keep the hidden values O(1).
    let w1 = filled(gpu, TOKEN_MLP_HIDDEN * d, 0.1);
    let b1 = f32_buffer(gpu, TOKEN_MLP_HIDDEN, 0.05);
    let w2 = filled(gpu, d * TOKEN_MLP_HIDDEN, 0.03);
    let b2 = f32_buffer(gpu, d, 0.1);
    let scratch = gpu
        .alloc(token_mlp_scratch_bytes(MAX_ROWS))
        .expect("device allocation");
    let kernels = gpu.kernels();
    for rows in [7usize, 56, 224] {
        // In place, as the decoder runs it: residual = y (linear), x = y (MLP).
        let y_rows = DeviceRegion::new(y.ptr(), rows * d * 2);
        let linear = TokenLinearArgs {
            rows,
            k: K,
            x: DeviceRegion::new(x.ptr(), rows * K * 2),
            weight: region(&w),
            bias: region(&b),
            residual: Some(y_rows),
            norm,
            eps: LN_EPS,
            y: y_rows,
        };
        // Weight + bias + norm parameters once; x read, residual read, y written.
        let bytes = (d * K * 2 + 3 * d * 4 + rows * K * 2 + 2 * rows * d * 2) as f64;
        bench_case(
            c,
            gpu,
            &format!("token_linear_ln_rows{rows}_k{K}"),
            |s| format!("{:>6.0} GB/s", bytes / s * 1e-9),
            || launch_token_linear(gpu, &linear),
        );

        let mlp = TokenMlpArgs {
            rows,
            x: y_rows,
            lin1: (region(&w1), region(&b1)),
            lin2: (region(&w2), region(&b2)),
            norm,
            eps: LN_EPS,
            scratch: region(&scratch),
            y: y_rows,
        };
        let sm = kernels.sm_count() as usize;
        let tile = select_token_mlp_tile(rows, sm, kernels.smem_per_block_optin())
            .map(token_mlp_tile_rows);
        // Both weights and all biases once; x read, y written.
        let bytes = (2 * TOKEN_MLP_HIDDEN * d * 2
            + (TOKEN_MLP_HIDDEN + 3 * d) * 4
            + 2 * rows * d * 2) as f64;
        bench_case(
            c,
            gpu,
            &format!("token_mlp_ln_rows{rows}"),
            |s| format!("{:>6.0} GB/s  (row tile {tile:?})", bytes / s * 1e-9),
            || launch_token_mlp(gpu, &mlp),
        );
    }
}

fn heads(c: &mut Criterion, gpu: &Gpu) {
    const MAX_PROMPTS: usize = 32;
    let (hid, out, mlps) = (HEAD_HIDDEN, HEAD_OUT, HEAD_MLPS);
    let queries = filled(gpu, MAX_PROMPTS * TOKENS * hid, 1.0);
    let w1 = filled(gpu, mlps * hid * hid, 0.06);
    let w2 = filled(gpu, mlps * hid * hid, 0.06);
    let w3 = filled(gpu, mlps * out * hid, 0.06);
    let b12 = f32_buffer(gpu, mlps * hid, 0.1);
    let b3 = f32_buffer(gpu, mlps * out, 0.1);
    let y = gpu
        .alloc(heads_output_bytes(MAX_PROMPTS))
        .expect("device allocation");
    let layers = [
        (region(&w1), region(&b12)),
        (region(&w2), region(&b12)),
        (region(&w3), region(&b3)),
    ];
    let weight_bytes =
        (2 * mlps * hid * hid + mlps * out * hid) * 2 + (2 * mlps * hid + mlps * out) * 4;
    for prompts in [8usize, 32] {
        let args = HeadsArgs {
            prompts,
            tokens: TOKENS,
            queries: DeviceRegion::new(queries.ptr(), prompts * TOKENS * hid * 2),
            layers,
            stride: prompts,
            y: region(&y),
        };
        // Weights once; the 5 output-token rows of each prompt read, [5][prompts][32] written.
        let bytes = (weight_bytes + prompts * mlps * hid * 2 + heads_output_bytes(prompts)) as f64;
        bench_case(
            c,
            gpu,
            &format!("heads_b{prompts}_t{TOKENS}"),
            |s| format!("{:>6.0} GB/s", bytes / s * 1e-9),
            || launch_heads(gpu, &args),
        );
    }
}

fn folded_image_to_token(c: &mut Criterion, gpu: &Gpu) {
    const MAX_PROMPTS: usize = 32;
    let (d, rows) = (FOLDED_DIM, FOLDED_HEADS * TOKENS);
    let plane = KEYS * d;
    // X (in place, so each launch normalises the previous output: values stay O(1)), PE,
    // Kf (scores within ~+-50), Vf; kb, bo, beta 0.1, gamma 1.
    let x = filled(gpu, MAX_PROMPTS * plane, 1.0);
    let pe = filled(gpu, plane, 1.0);
    let kf = filled(gpu, MAX_PROMPTS * rows * d, 0.1);
    let vf = filled(gpu, MAX_PROMPTS * rows * d, 0.5);
    let kb = f32_buffer(gpu, MAX_PROMPTS * rows, 0.1);
    let bias = f32_buffer(gpu, d, 0.1);
    let gamma = f32_buffer(gpu, d, 1.0);
    for prompts in [8usize, 32] {
        let args = FoldedImageToTokenArgs {
            prompts,
            tokens: TOKENS,
            pixels: KEYS,
            x: region(&x),
            x_batch: plane,
            pe: region(&pe),
            kf: region(&kf),
            kb: region(&kb),
            kb_batch: rows,
            vf: region(&vf),
            f_batch: rows * d,
            out_bias: region(&bias),
            norm: (region(&gamma), region(&bias)),
            eps: LN_EPS,
            y: region(&x),
            spare_sms: 0,
        };
        let flops = (prompts * 2 * 2 * KEYS * rows * d) as f64;
        let bytes = (prompts * 2 * plane * 2) as f64;
        bench_case(
            c,
            gpu,
            &format!("folded_image_to_token_b{prompts}_t{TOKENS}_n{KEYS}_in_place"),
            |s| {
                format!(
                    "{:>6.2} TFLOP/s  {:>6.0} GB/s X + Y",
                    flops / s * 1e-12,
                    bytes / s * 1e-9
                )
            },
            || launch_folded_image_to_token(gpu, &args),
        );
    }
}

fn sam_decoder_ops(c: &mut Criterion) {
    if let Err(e) = Gpu::probe() {
        eprintln!("skipping sam decoder op benchmarks: {e}");
        return;
    }
    let gpu = Gpu::new(0).expect("GPU opens");
    println!("device: {}", gpu.name());
    cross_attention(c, &gpu);
    folded_token_to_image(c, &gpu);
    token_ops(c, &gpu);
    heads(c, &gpu);
    folded_image_to_token(c, &gpu);
    head_fold(c, &gpu);
    convt1(c, &gpu);
}

fn head_fold(c: &mut Criterion, gpu: &Gpu) {
    const MAX_ROWS: usize = 224;
    let (width, d) = (FOLD_HEADS * FOLD_HEAD_DIM, TOKEN_DIM);
    let x = filled(gpu, MAX_ROWS * width, 1.0);
    let w = filled(gpu, width * d, 0.06);
    let bias = f32_buffer(gpu, width, 0.1);
    let kb = f32_buffer(gpu, MAX_ROWS * FOLD_HEADS, 0.0);
    let (kf, vf) = (
        filled(gpu, MAX_ROWS * FOLD_HEADS * d, 0.0),
        filled(gpu, MAX_ROWS * FOLD_HEADS * d, 0.0),
    );
    for rows in [56usize, 224] {
        let folds = [
            HeadFold {
                x: region(&x),
                x_stride: width,
                weight: region(&w),
                bias: Some((region(&bias), region(&kb))),
                scale: 0.25,
                y: region(&kf),
            },
            HeadFold {
                x: region(&x),
                x_stride: width,
                weight: region(&w),
                bias: None,
                scale: 1.0,
                y: region(&vf),
            },
        ];
        let bytes = (2 * (rows * width * 2 + width * d * 2 + rows * FOLD_HEADS * d * 2)) as f64;
        bench_case(
            c,
            gpu,
            &format!("head_fold_kv_rows{rows}"),
            |s| format!("{:>6.0} GB/s", bytes / s * 1e-9),
            || launch_head_fold(gpu, rows, &folds),
        );
    }
}

fn convt1(c: &mut Criterion, gpu: &Gpu) {
    const MAX_PROMPTS: usize = 32;
    let d = TOKEN_DIM;
    let x = filled(gpu, MAX_PROMPTS * KEYS * d, 1.0);
    let w = filled(gpu, d * d, 0.06);
    let bias = f32_buffer(gpu, d, 0.1);
    let (gamma, beta) = (f32_buffer(gpu, 64, 1.0), f32_buffer(gpu, 64, 0.1));
    let y = filled(gpu, MAX_PROMPTS * KEYS * d, 0.0);
    for prompts in [8usize, 32] {
        let rows = prompts * KEYS;
        let args = ConvT1Args {
            rows,
            x: region(&x),
            weight: region(&w),
            bias: region(&bias),
            ln: (region(&gamma), region(&beta)),
            eps: 1e-6,
            y: region(&y),
            spare_sms: 0,
        };
        let flops = (2 * rows * d * d) as f64;
        let bytes = (2 * rows * d * 2) as f64;
        bench_case(
            c,
            gpu,
            &format!("convt1_ln_gelu_b{prompts}"),
            |s| {
                format!(
                    "{:>6.2} TFLOP/s {:>6.0} GB/s x + y",
                    flops / s * 1e-12,
                    bytes / s * 1e-9
                )
            },
            || launch_convt1_ln_gelu(gpu, &args),
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = sam_decoder_ops
}
criterion_main!(benches);
