//! GPU tests of the fused attention and the TinyViT window kernels against f64 CPU references
//! on fresh seeded random inputs, with outputs poisoned (0xFF bytes = fp16 NaN) first. Shapes are
//! those of MobileSAM (TinyViT windows of 49 and 196 tokens with the gathered bias; the SAM
//! decoder's token<->image attentions), D-FINE's 300-query self-attention, strided slices of
//! packed qkv buffers and edge cases. Skipped with a printed reason where there is no GPU.

mod common;

use common::{gpu_available, Rng};
use finesam::ops::attention::{
    fragment_bias, fragment_bias_len, launch_attention, plan_attention, tinyvit_dense_bias,
    Attention, AttentionBias, AttentionWorkspace, BiasDtype, BiasLayout, HeadsTensor,
    WorkspaceNeed,
};
use finesam::ops::window::{launch_window_partition, launch_window_unpartition, WindowGeometry};
use finesam::{Error, Gpu};
use half::f16;

/// fp16 output vs the f64 reference on the same fp16 inputs: P is rounded to fp16 before the PV
/// product (<= 2^-11 relative per weight) and O to fp16 (<= 2^-11 relative): rel L2 <= 5e-3.
const REL_L2_TOL: f64 = 5e-3;
/// |O| stays below ~5 (a convex mix of N(0,1) values); 2^-11 * 5 rounding plus the P error.
const MAX_ABS_TOL: f64 = 1e-2;
const POISON: u8 = 0xff;

#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Q, K, V in their own `[B, L, H, D]` buffers.
    Separate,
    /// K and V shared by every batch entry (batch stride 0), as SAM's first token->image step.
    SharedKv,
    /// One `[B, L, H, 3, D]` qkv buffer (TinyViT); needs Lq == Lk.
    PackedPerHead,
    /// One `[B, L, 3, H, D]` qkv buffer (nn.MultiheadAttention in_proj); needs Lq == Lk.
    PackedStacked,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    batch: usize,
    heads: usize,
    lq: usize,
    lk: usize,
    d: usize,
    layout: Layout,
    bias: Option<BiasCase>,
    /// Std of Q and K entries: 1.5 gives logits of std ~2.3, 4.0 gives ~16 (stability test).
    sigma_qk: f64,
    /// Extra elements after each output row, checked to stay poisoned.
    o_pad: usize,
}

const fn case(
    name: &'static str,
    batch: usize,
    heads: usize,
    lq: usize,
    lk: usize,
    d: usize,
) -> Case {
    Case {
        name,
        batch,
        heads,
        lq,
        lk,
        d,
        layout: Layout::Separate,
        bias: None,
        sigma_qk: 1.5,
        o_pad: 0,
    }
}

#[derive(Clone, Copy, Debug)]
struct BiasCase {
    dtype: BiasDtype,
    /// `window > 0`: TinyViT's gathered bias (window^2 == Lq == Lk), shared by every batch
    /// entry; 0: a random bias per batch entry.
    window: usize,
    /// Upload in `fragment_bias` order instead of dense rows.
    fragments: bool,
}

const fn bias(dtype: BiasDtype, window: usize, fragments: bool) -> Option<BiasCase> {
    Some(BiasCase {
        dtype,
        window,
        fragments,
    })
}

/// Element offsets of one of Q/K/V/O inside the host (and device) buffer.
#[derive(Clone, Copy)]
struct View {
    offset: usize,
    batch: usize,
    token: usize,
    head: usize,
}

impl View {
    fn at(&self, b: usize, t: usize, h: usize) -> usize {
        self.offset + b * self.batch + t * self.token + h * self.head
    }

    fn device(&self, base: u64, total_elems: usize) -> HeadsTensor {
        HeadsTensor {
            ptr: base + 2 * self.offset as u64,
            bytes: 2 * (total_elems - self.offset),
            batch_stride: self.batch,
            token_stride: self.token,
            head_stride: self.head,
        }
    }
}

/// Q, K, V views of one input buffer and its length in elements.
fn input_views(c: &Case) -> ([View; 3], usize) {
    let hd = c.heads * c.d;
    let contiguous = |offset, tokens| View {
        offset,
        batch: tokens * hd,
        token: hd,
        head: c.d,
    };
    match c.layout {
        Layout::Separate => {
            let q = contiguous(0, c.lq);
            let k = contiguous(c.batch * c.lq * hd, c.lk);
            let v = contiguous(k.offset + c.batch * c.lk * hd, c.lk);
            ([q, k, v], v.offset + c.batch * c.lk * hd)
        }
        Layout::SharedKv => {
            let q = contiguous(0, c.lq);
            let k = View {
                batch: 0,
                ..contiguous(c.batch * c.lq * hd, c.lk)
            };
            let v = View {
                offset: k.offset + c.lk * hd,
                ..k
            };
            ([q, k, v], v.offset + c.lk * hd)
        }
        Layout::PackedPerHead | Layout::PackedStacked => {
            assert_eq!(c.lq, c.lk, "{}: packed qkv needs Lq == Lk", c.name);
            let per_head = matches!(c.layout, Layout::PackedPerHead);
            let view = |which: usize| View {
                offset: if per_head { which * c.d } else { which * hd },
                batch: c.lq * 3 * hd,
                token: 3 * hd,
                head: if per_head { 3 * c.d } else { c.d },
            };
            ([view(0), view(1), view(2)], c.batch * c.lq * 3 * hd)
        }
    }
}

/// Max |gpu - ref| and ||gpu - ref|| / ||ref||; NaN (an unwritten element) counts as infinite.
fn errors(gpu: &[f64], reference: &[f64]) -> (f64, f64) {
    let (mut max_abs, mut diff2, mut ref2) = (0.0f64, 0.0f64, 0.0f64);
    for (&g, &r) in gpu.iter().zip(reference) {
        let e = if g.is_finite() {
            (g - r).abs()
        } else {
            f64::INFINITY
        };
        max_abs = max_abs.max(e);
        diff2 += e * e;
        ref2 += r * r;
    }
    (max_abs, diff2.sqrt() / ref2.sqrt().max(1e-30))
}

fn to_bytes(values: &[f16]) -> Vec<u8> {
    bytemuck::cast_slice(values).to_vec()
}

fn from_bytes(bytes: &[u8]) -> Vec<f16> {
    bytes
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Runs one case on the GPU and returns (variant, max abs error, rel L2 error) per launch
/// variant (with and without a key-split workspace).
fn run_case(gpu: &Gpu, rng: &mut Rng, c: &Case) -> Vec<(String, f64, f64)> {
    let ([qv, kv, vv], input_len) = input_views(c);
    let mut input: Vec<f16> = (0..input_len)
        .map(|_| f16::from_f64(rng.normal()))
        .collect();
    // Q and K carry sigma_qk; V stays N(0, 1).
    for (view, tokens) in [(qv, c.lq), (kv, c.lk)] {
        let batches = if view.batch == 0 { 1 } else { c.batch };
        for b in 0..batches {
            for t in 0..tokens {
                for h in 0..c.heads {
                    let at = view.at(b, t, h);
                    for x in &mut input[at..at + c.d] {
                        *x = f16::from_f64(x.to_f64() * c.sigma_qk);
                    }
                }
            }
        }
    }

    // Bias: dense [B or 1, H, Lq, Lk] values as the kernel will see them (rounded to dtype).
    let (bias_values, bias_batch_stride): (Vec<f64>, usize) = match c.bias {
        None => (Vec::new(), 0),
        Some(BiasCase { window, .. }) if window > 0 => {
            assert_eq!(window * window, c.lq, "{}", c.name);
            let table: Vec<f32> = (0..c.heads * window * window)
                .map(|_| (2.0 * rng.normal()) as f32)
                .collect();
            let dense = tinyvit_dense_bias(&table, c.heads, window).unwrap();
            (dense.iter().map(|&x| x as f64).collect(), 0)
        }
        Some(_) => {
            let per_batch = c.heads * c.lq * c.lk;
            let values = (0..c.batch * per_batch)
                .map(|_| 2.0 * rng.normal())
                .collect();
            (values, per_batch)
        }
    };
    let round = |x: f64| match c.bias.map(|b| b.dtype) {
        Some(BiasDtype::F16) => f16::from_f64(x).to_f64(),
        _ => x as f32 as f64,
    };
    let bias_values: Vec<f64> = bias_values.into_iter().map(round).collect();
    // The device table: dense rows, or reordered into fragments (a per-batch table is just
    // B * H heads).
    let fragments = c.bias.is_some_and(|b| b.fragments);
    let device_values: Vec<f32> = if fragments {
        let heads = bias_values.len() / (c.lq * c.lk);
        let dense: Vec<f32> = bias_values.iter().map(|&x| x as f32).collect();
        fragment_bias(&dense, heads, c.lq, c.lk).unwrap()
    } else {
        bias_values.iter().map(|&x| x as f32).collect()
    };
    let bias_bytes: Vec<u8> = match c.bias.map(|b| b.dtype) {
        Some(BiasDtype::F16) => device_values
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect(),
        _ => device_values
            .iter()
            .flat_map(|&x| x.to_le_bytes())
            .collect(),
    };

    let hd = c.heads * c.d;
    let o_row = hd + c.o_pad;
    let ov = View {
        offset: 0,
        batch: c.lq * o_row,
        token: o_row,
        head: c.d,
    };
    let o_len = c.batch * c.lq * o_row;

    let input_buf = gpu.alloc(input_len * 2).unwrap();
    let o_buf = gpu.alloc(o_len * 2).unwrap();
    let bias_buf = gpu.alloc(bias_bytes.len()).unwrap();
    gpu.upload(input_buf.ptr(), &to_bytes(&input)).unwrap();
    if !bias_bytes.is_empty() {
        gpu.upload(bias_buf.ptr(), &bias_bytes).unwrap();
    }
    gpu.memset(o_buf.ptr(), POISON, o_len * 2).unwrap();

    let scale = (c.d as f64).powf(-0.5);
    let attention = Attention {
        batch: c.batch,
        heads: c.heads,
        q_len: c.lq,
        kv_len: c.lk,
        head_dim: c.d,
        scale: scale as f32,
        q: qv.device(input_buf.ptr(), input_len),
        k: kv.device(input_buf.ptr(), input_len),
        v: vv.device(input_buf.ptr(), input_len),
        o: ov.device(o_buf.ptr(), o_len),
        bias: c.bias.map(|b| {
            let (layout, head_stride) = if b.fragments {
                (BiasLayout::Fragments, fragment_bias_len(c.lq, c.lk))
            } else {
                (BiasLayout::Dense { row_stride: c.lk }, c.lq * c.lk)
            };
            AttentionBias {
                ptr: bias_buf.ptr(),
                bytes: bias_bytes.len(),
                dtype: b.dtype,
                layout,
                // Per-batch tables hold H heads per batch entry in either layout.
                batch_stride: if bias_batch_stride > 0 {
                    c.heads * head_stride
                } else {
                    0
                },
                head_stride,
            }
        }),
        workspace: None,
    };

    // f64 reference: naive softmax attention on the fp16 inputs (scale applied in f64, as the
    // kernel applies it in fp32 to the fp32 accumulators). Order (b, i, h, d).
    let scale = attention.scale as f64;
    let mut reference = Vec::with_capacity(c.batch * c.lq * hd);
    let mut logits = vec![0.0f64; c.lk];
    for b in 0..c.batch {
        for i in 0..c.lq {
            for h in 0..c.heads {
                let q = &input[qv.at(b, i, h)..][..c.d];
                for (j, logit) in logits.iter_mut().enumerate() {
                    let k = &input[kv.at(b, j, h)..][..c.d];
                    let dot: f64 = q.iter().zip(k).map(|(x, y)| x.to_f64() * y.to_f64()).sum();
                    let bias = if c.bias.is_some() {
                        bias_values[b * bias_batch_stride + (h * c.lq + i) * c.lk + j]
                    } else {
                        0.0
                    };
                    *logit = scale * dot + bias;
                }
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for d in 0..c.d {
                    let acc: f64 = weights
                        .iter()
                        .enumerate()
                        .map(|(j, w)| w * input[vv.at(b, j, h) + d].to_f64())
                        .sum();
                    reference.push(acc / total);
                }
            }
        }
    }

    // Without a workspace; then, where the plan splits keys across CTAs, twice with one (the
    // second run proves the kernel left its arrival counters at zero).
    let plan = plan_attention(gpu, &attention).unwrap();
    let workspace = (plan.workspace_bytes > 0).then(|| {
        let buf = gpu.alloc(plan.workspace_bytes).unwrap();
        gpu.memset(buf.ptr(), 0, buf.len()).unwrap();
        buf
    });
    let mut runs = vec![(format!("{:?}", plan.shape), None)];
    if let Some(ws) = &workspace {
        let ws = Some(AttentionWorkspace {
            ptr: ws.ptr(),
            bytes: ws.len(),
            counter_slots: plan.counter_slots,
        });
        for run in 1..=2 {
            let label = format!("{} key splits, run {run}", plan.key_splits);
            runs.push((label, ws));
        }
    }
    let mut results = Vec::new();
    for (label, workspace) in runs {
        gpu.memset(o_buf.ptr(), POISON, o_len * 2).unwrap();
        launch_attention(
            gpu,
            &Attention {
                workspace,
                ..attention
            },
        )
        .unwrap();
        let mut out_bytes = vec![0u8; o_len * 2];
        gpu.download(&mut out_bytes, o_buf.ptr()).unwrap();
        gpu.synchronize().unwrap();
        let out = from_bytes(&out_bytes);
        let mut got = Vec::with_capacity(reference.len());
        for b in 0..c.batch {
            for i in 0..c.lq {
                for h in 0..c.heads {
                    got.extend(out[ov.at(b, i, h)..][..c.d].iter().map(|x| x.to_f64()));
                }
                // Padding after each output row must stay poisoned (no stray writes).
                let row = ov.at(b, i, 0);
                assert!(
                    out_bytes[2 * (row + hd)..2 * (row + o_row)]
                        .iter()
                        .all(|&x| x == POISON),
                    "{} ({label}): padding of row ({b}, {i}) was written",
                    c.name
                );
            }
        }
        let (max_abs, rel_l2) = errors(&got, &reference);
        results.push((label, max_abs, rel_l2));
    }
    results
}

fn run_cases(test: &str, seed: u64, cases: &[Case]) {
    if !gpu_available(test) {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(seed);
    for c in cases {
        for (variant, max_abs, rel_l2) in run_case(&gpu, &mut rng, c) {
            println!(
                "{:<34} B={:<3} H={:<2} Lq={:<4} Lk={:<4} D={:<2} {:?} bias (dtype, fragments) {:?} [{variant}]: rel L2 {rel_l2:.2e}, max abs {max_abs:.2e}",
                c.name, c.batch, c.heads, c.lq, c.lk, c.d, c.layout, c.bias.map(|b| (b.dtype, b.fragments))
            );
            assert!(
                rel_l2 <= REL_L2_TOL && max_abs <= MAX_ABS_TOL,
                "{} [{variant}]: rel L2 {rel_l2:.3e} (tol {REL_L2_TOL:.0e}), max abs {max_abs:.3e} (tol {MAX_ABS_TOL:.0e})",
                c.name
            );
        }
    }
}

#[test]
fn attention_matches_reference_on_tinyvit_windows() {
    let w7 = |name, heads, bias| Case {
        layout: Layout::PackedPerHead,
        bias,
        ..case(name, 64, heads, 49, 49, 32)
    };
    let w14 = |name, batch, bias, o_pad| Case {
        layout: Layout::PackedPerHead,
        bias,
        o_pad,
        ..case(name, batch, 5, 196, 196, 32)
    };
    use BiasDtype::{F16, F32};
    run_cases(
        "attention_matches_reference_on_tinyvit_windows",
        0xa77e_0001,
        &[
            w7("tinyvit stage 2 window 7", 4, bias(F32, 7, false)),
            w7("tinyvit stage 4 window 7", 10, bias(F16, 7, false)),
            w7("tinyvit 2 heads window 7", 2, bias(F32, 7, false)),
            w7("tinyvit w7, fragment bias f16", 4, bias(F16, 7, true)),
            w7("tinyvit w7, fragment bias f32", 10, bias(F32, 7, true)),
            w14("tinyvit stage 3 window 14", 12, bias(F16, 14, false), 0),
            w14("tinyvit w14, padded O rows", 3, bias(F32, 14, false), 8),
            w14("tinyvit w14, fragment bias f16", 12, bias(F16, 14, true), 0),
            // One window: the 16-row split shape reads half 64-key fragment blocks.
            w14(
                "tinyvit w14, 1 window, fragments",
                1,
                bias(F32, 14, true),
                0,
            ),
            Case {
                layout: Layout::PackedPerHead,
                bias: bias(F16, 7, true),
                ..case("tinyvit w7, 2 windows, fragments", 2, 2, 49, 49, 32)
            },
        ],
    );
}

#[test]
fn attention_matches_reference_on_sam_decoder_shapes() {
    run_cases(
        "attention_matches_reference_on_sam_decoder_shapes",
        0xa77e_0002,
        &[
            case("sam token->image 8 boxes", 8, 8, 7, 4096, 16),
            case("sam token->image 1 box", 1, 8, 7, 4096, 16),
            Case {
                layout: Layout::SharedKv,
                ..case("sam token->image shared image keys", 8, 8, 7, 4096, 16)
            },
            case("sam token->image 40 tokens", 2, 8, 40, 4096, 16),
            case("sam token->image D=32", 2, 8, 11, 4096, 32),
            case("sam image->token", 4, 8, 4096, 7, 16),
            case("sam image->token 40 tokens", 2, 8, 4096, 40, 16),
            case("sam token self-attention", 8, 8, 7, 7, 32),
        ],
    );
}

#[test]
fn attention_matches_reference_on_dfine_and_edge_shapes() {
    run_cases(
        "attention_matches_reference_on_dfine_and_edge_shapes",
        0xa77e_0003,
        &[
            Case {
                layout: Layout::PackedStacked,
                ..case("dfine decoder self-attention", 1, 8, 300, 300, 32)
            },
            Case {
                layout: Layout::PackedStacked,
                ..case("dfine-n decoder self-attention", 2, 8, 300, 300, 16)
            },
            Case {
                layout: Layout::PackedStacked,
                o_pad: 16,
                ..case("dfine aifi 20x20", 1, 8, 400, 400, 32)
            },
            case("head dim 64", 2, 3, 130, 333, 64),
            case("head dim 64, 5 queries", 2, 3, 5, 1000, 64),
            case("single key", 2, 2, 70, 1, 64),
            case("single query, single key", 1, 1, 1, 1, 16),
            case("one query", 3, 2, 1, 129, 32),
            case("17 queries (rows shape)", 2, 2, 17, 65, 32),
            Case {
                bias: bias(BiasDtype::F32, 0, false),
                sigma_qk: 4.0,
                ..case("large logits with per-batch bias", 2, 4, 100, 777, 32)
            },
            Case {
                bias: bias(BiasDtype::F16, 0, true),
                sigma_qk: 4.0,
                ..case("large logits, per-batch fragments", 4, 20, 100, 777, 32)
            },
            Case {
                bias: bias(BiasDtype::F32, 0, true),
                ..case("D=64 split keys, per-batch fragments", 2, 3, 5, 300, 64)
            },
            Case {
                sigma_qk: 4.0,
                ..case("large logits, split keys", 4, 4, 9, 3000, 16)
            },
        ],
    );
}

#[test]
fn launches_of_different_batches_share_one_workspace() {
    if !gpu_available("launches_of_different_batches_share_one_workspace") {
        return;
    }
    // The mask decoder's token->image shape at 8 prompts and at 1: the smaller batch splits
    // its keys more and has fewer arrival counters. Sharing one workspace, its partials must
    // not land on the larger launch's counters (they did when the partials started right after
    // each launch's own counters): the larger launch gives the same bits before and after.
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0xa77e);
    let (heads, d, lq, lk, max_batch) = (8usize, 16usize, 7usize, 4096usize, 8usize);
    let upload = |n: usize, rng: &mut Rng| {
        let values: Vec<f16> = (0..n).map(|_| f16::from_f64(rng.normal())).collect();
        let buf = gpu.alloc(n * 2).unwrap();
        gpu.upload(buf.ptr(), &to_bytes(&values)).unwrap();
        buf
    };
    let q = upload(max_batch * lq * heads * d, &mut rng);
    let k = upload(max_batch * lk * heads * d, &mut rng);
    let v = upload(max_batch * lk * heads * d, &mut rng);
    let o = gpu.alloc(max_batch * lq * heads * d * 2).unwrap();
    let tensor = |buf: &finesam::gpu::DeviceBuffer, tokens: usize| {
        HeadsTensor::contiguous(buf.ptr(), buf.len(), tokens, heads, d)
    };
    let launch = |batch: usize| Attention {
        batch,
        heads,
        q_len: lq,
        kv_len: lk,
        head_dim: d,
        scale: 0.25,
        q: tensor(&q, lq),
        k: tensor(&k, lk),
        v: tensor(&v, lk),
        o: tensor(&o, lq),
        bias: None,
        workspace: None,
    };
    let (big, small) = (launch(max_batch), launch(1));
    let (big_plan, small_plan) = (
        plan_attention(&gpu, &big).unwrap(),
        plan_attention(&gpu, &small).unwrap(),
    );
    assert!(
        big_plan.key_splits > 1 && small_plan.counter_slots < big_plan.counter_slots,
        "the case must split keys at both sizes: {big_plan:?} {small_plan:?}"
    );
    let mut need = WorkspaceNeed::default();
    need.add(&big_plan);
    need.add(&small_plan);
    let buf = gpu.alloc(need.bytes()).unwrap();
    gpu.memset(buf.ptr(), 0, buf.len()).unwrap();
    let workspace = AttentionWorkspace {
        ptr: buf.ptr(),
        bytes: buf.len(),
        counter_slots: need.counter_slots,
    };
    let run = |a: Attention| -> Vec<u8> {
        let a = Attention {
            workspace: Some(workspace),
            ..a
        };
        launch_attention(&gpu, &a).unwrap();
        let mut out = vec![0u8; o.len()];
        gpu.download(&mut out, o.ptr()).unwrap();
        gpu.synchronize().unwrap();
        out
    };
    let before = run(big);
    run(small);
    let after = run(big);
    assert!(
        before == after,
        "a smaller launch changed the larger one's result"
    );
    // Too few counters for a launch is a typed error, not a race.
    let short = AttentionWorkspace {
        counter_slots: small_plan.counter_slots,
        ..workspace
    };
    let r = launch_attention(
        &gpu,
        &Attention {
            workspace: Some(short),
            ..big
        },
    );
    assert!(
        matches!(&r, Err(Error::Launch { message, .. }) if message.contains("arrival counters")),
        "{r:?}"
    );
}

#[test]
fn attention_launch_errors_are_typed() {
    if !gpu_available("attention_launch_errors_are_typed") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let buf = gpu.alloc(1 << 16).unwrap();
    let view = HeadsTensor::contiguous(buf.ptr(), 1 << 16, 16, 2, 32);
    let mut attention = Attention {
        batch: 1,
        heads: 2,
        q_len: 16,
        kv_len: 16,
        head_dim: 24,
        scale: 0.2,
        q: view,
        k: view,
        v: view,
        o: view,
        bias: None,
        workspace: None,
    };
    for (head_dim, q_len) in [(24, 16), (32, 10_000)] {
        // An unsupported head dim; then more queries than the buffer holds.
        attention.head_dim = head_dim;
        attention.q_len = q_len;
        let result = launch_attention(&gpu, &attention);
        assert!(
            matches!(
                result,
                Err(Error::Launch {
                    kernel: "attention",
                    ..
                })
            ),
            "{result:?}"
        );
    }
}

/// CPU reference of TinyViTBlock's pad + window partition.
fn partition_reference(g: &WindowGeometry, map: &[f16]) -> Vec<f16> {
    let (wy, wx) = g.grid();
    let mut out = Vec::with_capacity(g.windows_elements());
    for n in 0..g.batch {
        for by in 0..wy {
            for bx in 0..wx {
                for ty in 0..g.window {
                    for tx in 0..g.window {
                        let (y, x) = (by * g.window + ty, bx * g.window + tx);
                        for ch in 0..g.channels {
                            out.push(if y < g.height && x < g.width {
                                map[((n * g.height + y) * g.width + x) * g.channels + ch]
                            } else {
                                f16::ZERO
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// CPU reference of the window reverse + crop (+ `res_x + x` in fp16 arithmetic).
fn unpartition_reference(
    g: &WindowGeometry,
    windows: &[f16],
    residual: Option<&[f16]>,
) -> Vec<f16> {
    let (wy, wx) = g.grid();
    let mut out = Vec::with_capacity(g.map_elements());
    for n in 0..g.batch {
        for y in 0..g.height {
            for x in 0..g.width {
                let win = (n * wy + y / g.window) * wx + x / g.window;
                let token = (y % g.window) * g.window + x % g.window;
                for ch in 0..g.channels {
                    let v = windows[(win * g.tokens() + token) * g.channels + ch];
                    let i = out.len();
                    out.push(match residual {
                        Some(r) => f16::from_f32(r[i].to_f32() + v.to_f32()),
                        None => v,
                    });
                }
            }
        }
    }
    out
}

fn random_f16(rng: &mut Rng, n: usize) -> Vec<f16> {
    (0..n).map(|_| f16::from_f64(3.0 * rng.normal())).collect()
}

fn download_f16(gpu: &Gpu, ptr: u64, n: usize) -> Vec<f16> {
    let mut bytes = vec![0u8; n * 2];
    gpu.download(&mut bytes, ptr).unwrap();
    gpu.synchronize().unwrap();
    from_bytes(&bytes)
}

#[test]
fn window_partition_and_unpartition_are_exact() {
    if !gpu_available("window_partition_and_unpartition_are_exact") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0xa77e_0004);
    let geometries = [
        (1, 128, 128, 128, 7), // MobileSAM layers[1]
        (1, 64, 64, 160, 14),  // layers[2]
        (1, 64, 64, 320, 7),   // layers[3]
        (2, 10, 13, 8, 7),
        (3, 7, 7, 16, 7), // exactly one window, no padding
        (1, 1, 30, 24, 14),
    ];
    for (batch, height, width, channels, window) in geometries {
        let g = WindowGeometry {
            batch,
            height,
            width,
            channels,
            window,
        };
        let map = random_f16(&mut rng, g.map_elements());
        let map_buf = gpu.alloc(g.map_elements() * 2).unwrap();
        let win_buf = gpu.alloc(g.windows_elements() * 2).unwrap();
        gpu.upload(map_buf.ptr(), &to_bytes(&map)).unwrap();
        gpu.memset(win_buf.ptr(), POISON, g.windows_elements() * 2)
            .unwrap();
        launch_window_partition(
            &gpu,
            &g,
            map_buf.ptr(),
            map_buf.len(),
            win_buf.ptr(),
            win_buf.len(),
        )
        .unwrap();
        let windows = download_f16(&gpu, win_buf.ptr(), g.windows_elements());
        let expected = partition_reference(&g, &map);
        assert!(
            windows
                .iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "partition {g:?} differs from the reference"
        );

        // Reverse of fresh window values, without and with the residual (also in place).
        let attn = random_f16(&mut rng, g.windows_elements());
        gpu.upload(win_buf.ptr(), &to_bytes(&attn)).unwrap();
        let out_buf = gpu.alloc(g.map_elements() * 2).unwrap();
        // (residual, output): none, a separate residual, and in place on the residual (last,
        // since it overwrites the map).
        let (map_at, out_at) = (
            (map_buf.ptr(), map_buf.len()),
            (out_buf.ptr(), out_buf.len()),
        );
        for (label, residual, (out_ptr, out_len)) in [
            ("no residual", None, out_at),
            ("residual", Some(map_at), out_at),
            ("in place", Some(map_at), map_at),
        ] {
            if out_ptr != map_at.0 {
                gpu.memset(out_ptr, POISON, out_len).unwrap();
            }
            launch_window_unpartition(
                &gpu,
                &g,
                win_buf.ptr(),
                win_buf.len(),
                residual,
                out_ptr,
                out_len,
            )
            .unwrap();
            let out = download_f16(&gpu, out_ptr, g.map_elements());
            let expected = unpartition_reference(&g, &attn, residual.is_some().then_some(&map[..]));
            assert!(
                out.iter()
                    .zip(&expected)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "unpartition {g:?} ({label}) differs from the reference"
            );
        }
        println!("window {g:?}: partition and unpartition exact");
    }

    let g = WindowGeometry {
        batch: 1,
        height: 8,
        width: 8,
        channels: 12,
        window: 7,
    };
    let buf = gpu.alloc(4096).unwrap();
    let result = launch_window_partition(&gpu, &g, buf.ptr(), 4096, buf.ptr(), 4096);
    assert!(
        matches!(
            result,
            Err(Error::Launch {
                kernel: "window_partition",
                ..
            })
        ),
        "{result:?}"
    );
}
