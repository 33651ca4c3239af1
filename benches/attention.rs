//! Criterion benchmarks of the fused attention at the shapes MobileSAM and D-FINE run (GPU time
//! from CUDA events), plus TinyViT's window partition/unpartition. Prints achieved TFLOP/s
//! (useful flops: 4 * B * H * Lq * Lk * D, padding not counted) or GB/s per case. Skips with a
//! printed reason without a GPU.
//!
//! MobileSAM at 1024x1024 (tiny_vit_sam.py): layers[1] 128x128 tokens, dim 128, 4 heads,
//! window 7 -> padded to 133x133 = 19x19 = 361 windows of 49 tokens (2 blocks); layers[2] 64x64,
//! dim 160, 5 heads, window 14 -> 70x70 = 25 windows of 196 (6 blocks); layers[3] 64x64, dim 320,
//! 10 heads, window 7 -> 10x10 = 100 windows of 49 (2 blocks). Head dim 32 everywhere.
//! Mask decoder (transformer.py): 7 tokens (5 output + 2 box corners) per box, 4096 image
//! tokens, cross attention at dim 128 / 8 heads (D = 16), token self-attention D = 32.

mod common;

use common::{filled, gpu_duration};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use finesam::gpu::DeviceBuffer;
use finesam::ops::attention::{
    attention_flops, fragment_bias_len, launch_attention, plan_attention, Attention, AttentionBias,
    AttentionWorkspace, BiasDtype, HeadsTensor,
};
use finesam::ops::window::{launch_window_partition, launch_window_unpartition, WindowGeometry};
use finesam::Gpu;

struct Case {
    name: &'static str,
    batch: usize,
    heads: usize,
    lq: usize,
    lk: usize,
    d: usize,
    /// TinyViT: one packed `[B, L, H, 3, D]` qkv buffer and the shared fp16 bias (fragment
    /// order; also timed dense).
    tinyvit: bool,
}

/// Buffers kept alive for the duration of one benchmark.
struct Prepared {
    workspace: Option<DeviceBuffer>,
    attention: Attention,
    /// TinyViT only: the same bias as a dense `[H, N, N]` table.
    dense_bias: Option<AttentionBias>,
    _buffers: Vec<DeviceBuffer>,
}

fn prepare(gpu: &Gpu, c: &Case) -> Prepared {
    let hd = c.heads * c.d;
    let o = gpu.alloc(c.batch * c.lq * hd * 2).expect("alloc");
    let o_view = HeadsTensor::contiguous(o.ptr(), o.len(), c.lq, c.heads, c.d);
    let mut dense_bias = None;
    let (q, k, v, bias, buffers) = if c.tinyvit {
        let qkv = filled(gpu, c.batch * c.lq * 3 * hd, 2.0);
        let table = filled(gpu, c.heads * c.lq * c.lk, 2.0);
        let frags = filled(gpu, c.heads * fragment_bias_len(c.lq, c.lk), 2.0);
        let view =
            |which| HeadsTensor::packed_qkv(qkv.ptr(), qkv.len(), c.lq, c.heads, c.d, which, true);
        let dense =
            AttentionBias::shared(table.ptr(), table.len(), BiasDtype::F16, c.lq, c.lk, false);
        dense_bias = Some(dense);
        let bias =
            AttentionBias::shared(frags.ptr(), frags.len(), BiasDtype::F16, c.lq, c.lk, true);
        (
            view(0),
            view(1),
            view(2),
            Some(bias),
            vec![qkv, table, frags, o],
        )
    } else {
        let q = filled(gpu, c.batch * c.lq * hd, 2.0);
        let k = filled(gpu, c.batch * c.lk * hd, 2.0);
        let v = filled(gpu, c.batch * c.lk * hd, 1.0);
        let view = |buf: &DeviceBuffer, tokens| {
            HeadsTensor::contiguous(buf.ptr(), buf.len(), tokens, c.heads, c.d)
        };
        let views = (view(&q, c.lq), view(&k, c.lk), view(&v, c.lk));
        (views.0, views.1, views.2, None, vec![q, k, v, o])
    };
    let mut attention = Attention {
        batch: c.batch,
        heads: c.heads,
        q_len: c.lq,
        kv_len: c.lk,
        head_dim: c.d,
        scale: (c.d as f32).powf(-0.5),
        q,
        k,
        v,
        o: o_view,
        bias,
        workspace: None,
    };
    // Give the launch the key-split workspace its plan asks for (zeroed once).
    let plan = plan_attention(gpu, &attention).expect("plan");
    let workspace = (plan.workspace_bytes > 0).then(|| {
        let buf = gpu.alloc(plan.workspace_bytes).expect("alloc");
        gpu.memset(buf.ptr(), 0, buf.len()).expect("memset");
        attention.workspace = Some(AttentionWorkspace {
            ptr: buf.ptr(),
            bytes: buf.len(),
            counter_slots: plan.counter_slots,
        });
        buf
    });
    Prepared {
        attention,
        dense_bias,
        workspace,
        _buffers: buffers,
    }
}

const CASES: &[Case] = &[
    Case {
        name: "tinyvit_stage2_361win_49tok_h4",
        batch: 361,
        heads: 4,
        lq: 49,
        lk: 49,
        d: 32,
        tinyvit: true,
    },
    Case {
        name: "tinyvit_stage3_25win_196tok_h5",
        batch: 25,
        heads: 5,
        lq: 196,
        lk: 196,
        d: 32,
        tinyvit: true,
    },
    Case {
        name: "tinyvit_stage4_100win_49tok_h10",
        batch: 100,
        heads: 10,
        lq: 49,
        lk: 49,
        d: 32,
        tinyvit: true,
    },
    Case {
        name: "sam_token_to_image_b8_7x4096_d16",
        batch: 8,
        heads: 8,
        lq: 7,
        lk: 4096,
        d: 16,
        tinyvit: false,
    },
    Case {
        name: "sam_token_to_image_b1_7x4096_d16",
        batch: 1,
        heads: 8,
        lq: 7,
        lk: 4096,
        d: 16,
        tinyvit: false,
    },
    Case {
        name: "sam_image_to_token_b8_4096x7_d16",
        batch: 8,
        heads: 8,
        lq: 4096,
        lk: 7,
        d: 16,
        tinyvit: false,
    },
    Case {
        name: "sam_token_self_b8_7x7_d32",
        batch: 8,
        heads: 8,
        lq: 7,
        lk: 7,
        d: 32,
        tinyvit: false,
    },
    Case {
        name: "dfine_self_300x300_h8_d32",
        batch: 1,
        heads: 8,
        lq: 300,
        lk: 300,
        d: 32,
        tinyvit: false,
    },
    Case {
        name: "dfine_aifi_400x400_h8_d32",
        batch: 1,
        heads: 8,
        lq: 400,
        lk: 400,
        d: 32,
        tinyvit: false,
    },
    // Large square problems: the kernel's throughput ceiling per head dim.
    Case {
        name: "peak_b4_h8_4096x4096_d64",
        batch: 4,
        heads: 8,
        lq: 4096,
        lk: 4096,
        d: 64,
        tinyvit: false,
    },
    Case {
        name: "peak_b4_h8_4096x4096_d32",
        batch: 4,
        heads: 8,
        lq: 4096,
        lk: 4096,
        d: 32,
        tinyvit: false,
    },
];

fn attention(c: &mut Criterion) {
    if let Err(e) = Gpu::probe() {
        eprintln!("skipping attention benchmarks: {e}");
        return;
    }
    let gpu = Gpu::new(0).expect("gpu");
    println!("device: {}", gpu.name());
    let mut group = c.benchmark_group("attention");
    for case in CASES {
        let prepared = prepare(&gpu, case);
        let plan = plan_attention(&gpu, &prepared.attention).expect("plan");
        // With the key-split workspace (where the plan splits) and, for comparison, without.
        let mut variants = vec![("", prepared.attention)];
        if prepared.workspace.is_some() {
            let unsplit = Attention {
                workspace: None,
                ..prepared.attention
            };
            variants.push(("_no_key_split", unsplit));
        }
        if let Some(dense) = prepared.dense_bias {
            let a = Attention {
                bias: Some(dense),
                ..prepared.attention
            };
            variants.push(("_dense_bias", a));
        }
        for (suffix, a) in variants {
            let name = format!("{}{suffix}", case.name);
            let run = || launch_attention(&gpu, &a);
            run().expect("attention launches");
            let ms = gpu.time_ms(200, run).expect("timing");
            let flops = attention_flops(case.batch, case.heads, case.lq, case.lk, case.d);
            println!(
                "{name:<48} {:>8.2} us  {:>7.2} TFLOP/s  ({:?}, {} query tiles, {} key splits)",
                ms * 1e3,
                flops / (ms * 1e-3) / 1e12,
                plan.shape,
                plan.q_tiles,
                if a.workspace.is_some() {
                    plan.key_splits
                } else {
                    1
                },
            );
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let ms = gpu.time_ms(iters as usize, run).expect("attention");
                    gpu_duration(ms, iters)
                })
            });
        }
    }
    group.finish();
}

fn windows(c: &mut Criterion) {
    if let Err(e) = Gpu::probe() {
        eprintln!("skipping window benchmarks: {e}");
        return;
    }
    let gpu = Gpu::new(0).expect("gpu");
    let mut group = c.benchmark_group("window");
    // MobileSAM layers[1]: 128x128x128 -> 361 windows of 49 tokens.
    let g = WindowGeometry {
        batch: 1,
        height: 128,
        width: 128,
        channels: 128,
        window: 7,
    };
    let map = filled(&gpu, g.map_elements(), 1.0);
    let win = filled(&gpu, g.windows_elements(), 1.0);
    let out = gpu.alloc(g.map_elements() * 2).expect("alloc");
    let bytes = 2.0 * (g.map_elements() + g.windows_elements()) as f64;
    let partition =
        || launch_window_partition(&gpu, &g, map.ptr(), map.len(), win.ptr(), win.len());
    let unpartition = || {
        launch_window_unpartition(
            &gpu,
            &g,
            win.ptr(),
            win.len(),
            Some((map.ptr(), map.len())),
            out.ptr(),
            out.len(),
        )
    };
    for (name, extra_bytes, work) in [
        (
            "partition_128x128x128_w7",
            0.0,
            &partition as &dyn Fn() -> finesam::Result<()>,
        ),
        (
            "unpartition_residual_128x128x128_w7",
            2.0 * g.map_elements() as f64,
            &unpartition,
        ),
    ] {
        work().expect("window kernel launches");
        let ms = gpu.time_ms(200, work).expect("timing");
        println!(
            "{name:<36} {:>8.2} us  {:>7.1} GB/s",
            ms * 1e3,
            (bytes + extra_bytes) / (ms * 1e-3) / 1e9
        );
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let ms = gpu.time_ms(iters as usize, work).expect("window");
                gpu_duration(ms, iters)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = attention, windows
}
criterion_main!(benches);
