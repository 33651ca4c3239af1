//! CPU tests of the attention launchers' host side: TinyViT's bias index against the official
//! itertools loop, the dense bias gather, and argument checking (every bad launch is a typed
//! `Error::Launch` before anything reaches the GPU).

use std::collections::HashMap;

use finesam::ops::attention::{
    fragment_bias, fragment_bias_len, tinyvit_bias_indices, tinyvit_dense_bias, Attention,
    AttentionBias, AttentionShape, AttentionWorkspace, BiasDtype, HeadsTensor,
};
use finesam::ops::window::WindowGeometry;
use finesam::Error;

/// `Attention.__init__` in mobile_sam/modeling/tiny_vit_sam.py, line for line.
fn official_bias_indices(window: usize) -> (usize, Vec<usize>) {
    let points: Vec<(i64, i64)> = (0..window as i64)
        .flat_map(|y| (0..window as i64).map(move |x| (y, x)))
        .collect();
    let mut offsets: HashMap<(i64, i64), usize> = HashMap::new();
    let mut idxs = Vec::new();
    for p1 in &points {
        for p2 in &points {
            let offset = ((p1.0 - p2.0).abs(), (p1.1 - p2.1).abs());
            let next = offsets.len();
            idxs.push(*offsets.entry(offset).or_insert(next));
        }
    }
    (offsets.len(), idxs)
}

#[test]
fn tinyvit_bias_indices_match_the_official_loop() {
    for window in [1, 2, 3, 7, 14] {
        let (offsets, official) = official_bias_indices(window);
        assert_eq!(offsets, window * window, "window {window}");
        assert_eq!(tinyvit_bias_indices(window), official, "window {window}");
    }
}

#[test]
fn tinyvit_dense_bias_gathers_per_head() {
    let (heads, window) = (5, 14);
    let offsets = window * window;
    let biases: Vec<f32> = (0..heads * offsets)
        .map(|i| i as f32 * 0.25 - 7.0)
        .collect();
    let dense = tinyvit_dense_bias(&biases, heads, window).unwrap();
    let (_, idxs) = official_bias_indices(window);
    let n = offsets;
    assert_eq!(dense.len(), heads * n * n);
    for h in 0..heads {
        for (i, &idx) in idxs.iter().enumerate() {
            assert_eq!(dense[h * n * n + i], biases[h * offsets + idx]);
        }
    }
    assert!(matches!(
        tinyvit_dense_bias(&biases[1..], heads, window),
        Err(Error::Plan(_))
    ));
}

#[test]
fn fragment_bias_holds_every_element_once_in_accumulator_order() {
    let (heads, q_len, kv_len) = (3, 49, 70);
    // Distinct non-zero values: 1 + flat index.
    let dense: Vec<f32> = (0..heads * q_len * kv_len)
        .map(|i| 1.0 + i as f32)
        .collect();
    let frag = fragment_bias(&dense, heads, q_len, kv_len).unwrap();
    let per_head = fragment_bias_len(q_len, kv_len);
    assert_eq!(per_head, 4 * 2 * 16 * 64);
    assert_eq!(frag.len(), heads * per_head);
    let mut seen = vec![0u32; dense.len()];
    for (i, &v) in frag.iter().enumerate() {
        if v != 0.0 {
            let flat = v as usize - 1;
            assert_eq!(flat / (q_len * kv_len), i / per_head, "value left its head");
            seen[flat] += 1;
        }
    }
    assert!(seen.iter().all(|&n| n == 1), "every element exactly once");
    // Head 1, row block 0, key block 1: lane 5 (g = 1, t = 1), n-tile 2, accumulator 3 is
    // row g + 8 = 9, key 64 + 8 * 2 + 2 * 1 + 1 = 83 (past Lk = 70: padding, 0); accumulator 2
    // of n-tile 0 is row 9, key 64 + 2 = 66.
    let block = per_head + 16 * 64;
    assert_eq!(frag[block + 5 * 32 + 2 * 4 + 3], 0.0);
    assert_eq!(
        frag[block + 5 * 32 + 2],
        dense[q_len * kv_len + 9 * kv_len + 66]
    );
    assert!(matches!(
        fragment_bias(&dense[1..], heads, q_len, kv_len),
        Err(Error::Plan(_))
    ));
}

const BASE: u64 = 0x7f00_0000_0000;

fn valid() -> Attention {
    let (batch, heads, lq, lk, d) = (2, 4, 49, 49, 32);
    let qkv_bytes = batch * lq * 3 * heads * d * 2;
    let view = |which| HeadsTensor::packed_qkv(BASE, qkv_bytes, lq, heads, d, which, true);
    Attention {
        batch,
        heads,
        q_len: lq,
        kv_len: lk,
        head_dim: d,
        scale: (d as f32).powf(-0.5),
        q: view(0),
        k: view(1),
        v: view(2),
        o: HeadsTensor::contiguous(BASE + 0x100_0000, batch * lq * heads * d * 2, lq, heads, d),
        bias: Some(AttentionBias::shared(
            BASE + 0x200_0000,
            heads * lq * lk * 4,
            BiasDtype::F32,
            lq,
            lk,
            false,
        )),
        workspace: None,
    }
}

fn expect_launch_error(attention: Attention, needle: &str) {
    match attention.check() {
        Err(Error::Launch { kernel, message }) => {
            assert_eq!(kernel, "attention");
            assert!(message.contains(needle), "'{message}' lacks '{needle}'");
        }
        other => panic!("expected a launch error about {needle}, got {other:?}"),
    }
}

#[test]
fn attention_check_accepts_valid_launches() {
    assert!(valid().check().is_ok());
    // K/V broadcast over the batch (batch stride 0) is allowed.
    let mut shared_kv = valid();
    shared_kv.k.batch_stride = 0;
    shared_kv.v.batch_stride = 0;
    assert!(shared_kv.check().is_ok());
}

fn plain(batch: usize, heads: usize, q_len: usize, kv_len: usize, d: usize) -> Attention {
    let q = HeadsTensor::contiguous(BASE, batch * q_len * heads * d * 2, q_len, heads, d);
    let kv = HeadsTensor::contiguous(BASE, batch * kv_len * heads * d * 2, kv_len, heads, d);
    Attention {
        batch,
        heads,
        q_len,
        kv_len,
        head_dim: d,
        scale: 0.25,
        q,
        k: kv,
        v: kv,
        o: q,
        bias: None,
        workspace: None,
    }
}

#[test]
fn attention_plan_picks_shapes_and_key_splits() {
    const H100_SMS: usize = 132;
    let plan = |a: Attention| {
        let p = a.plan(H100_SMS).unwrap();
        (
            p.shape,
            p.q_tiles,
            p.key_splits,
            p.tiles_per_split,
            p.workspace_bytes,
        )
    };
    // TinyViT layers[1]: 361 windows x 4 heads fill the GPU with the 4-warp shape.
    assert_eq!(
        plan(plain(361, 4, 49, 49, 32)),
        (AttentionShape::Rows, 1, 1, 1, 0)
    );
    // SAM token->image, 8 boxes: 64 (b, h) pairs, 32 stages of 128 keys -> 5 splits of 7
    // stages; workspace = 64 counters (256 B) + 64 x 5 partials of 16 x 18 floats.
    assert_eq!(
        plan(plain(8, 8, 7, 4096, 16)),
        (
            AttentionShape::SplitKeys,
            1,
            5,
            7,
            256 + 64 * 5 * 16 * 18 * 4
        )
    );
    // One box: 8 pairs -> one stage per split.
    assert_eq!(plan(plain(1, 8, 7, 4096, 16)).2, 32);
    // D-FINE decoder: 40 CTAs of 64 rows would idle the GPU; 152 of 16 rows, 2 key splits.
    assert_eq!(
        plan(plain(1, 8, 300, 300, 32)),
        (
            AttentionShape::SplitKeys,
            19,
            2,
            2,
            608 + 152 * 2 * 16 * 34 * 4
        )
    );
    // Many short sequences: no split, no workspace.
    assert_eq!(
        plan(plain(64, 8, 7, 7, 32)),
        (AttentionShape::SplitKeys, 1, 1, 1, 0)
    );
    // Head dim 64 stages 64 keys.
    assert_eq!(plan(plain(1, 1, 5, 1000, 64)).2, 16);
}

#[test]
fn attention_check_rejects_bad_arguments() {
    let mut a = valid();
    a.head_dim = 48;
    expect_launch_error(a, "head_dim 48");

    let mut a = valid();
    a.kv_len = 0;
    expect_launch_error(a, "kv_len is 0");

    let mut a = valid();
    a.q.ptr += 2;
    expect_launch_error(a, "not 16-byte aligned");

    let mut a = valid();
    a.k.token_stride += 4;
    expect_launch_error(a, "multiples of 8");

    let mut a = valid();
    a.v.bytes -= 2;
    expect_launch_error(a, "V reaches byte");

    let mut a = valid();
    a.o.token_stride = 0;
    expect_launch_error(a, "outputs would overlap");

    let mut a = valid();
    if let Some(bias) = a.bias.as_mut() {
        bias.batch_stride = 4 * 49 * 49; // per-window bias, but the table holds one window
    }
    expect_launch_error(a, "bias reaches byte");

    let mut a = valid();
    if let Some(bias) = a.bias.as_mut() {
        bias.ptr += 2;
    }
    expect_launch_error(a, "bias address");

    let mut a = valid();
    a.scale = f32::NAN;
    expect_launch_error(a, "scale");

    let mut a = valid();
    a.scale = 0.0;
    expect_launch_error(a, "scale 0 with a bias");

    let mut a = valid();
    a.bias = Some(AttentionBias::shared(
        BASE + 0x200_0008,
        1 << 20,
        BiasDtype::F16,
        49,
        49,
        true,
    ));
    expect_launch_error(a, "not aligned to 16 bytes");

    let mut a = valid();
    a.bias = Some(AttentionBias::shared(
        BASE + 0x200_0000,
        4 * fragment_bias_len(49, 49) * 2 - 2,
        BiasDtype::F16,
        49,
        49,
        true,
    ));
    expect_launch_error(a, "bias reaches byte");

    let mut a = valid();
    a.batch = 70_000;
    expect_launch_error(a, "65535");

    let mut a = valid();
    a.workspace = Some(AttentionWorkspace {
        ptr: BASE + 8,
        bytes: 1 << 20,
        counter_slots: 64,
    });
    expect_launch_error(a, "workspace address");
}

#[test]
fn window_geometry_counts_tinyvit_stages() {
    // MobileSAM at 1024x1024: layers[1] runs at 128x128 with window 7, layers[2] and layers[3]
    // at 64x64 with windows 14 and 7 (tiny_vit_sam.py, TinyViT.__init__ and PatchMerging).
    let stage = |side, channels, window| WindowGeometry {
        batch: 1,
        height: side,
        width: side,
        channels,
        window,
    };
    let s2 = stage(128, 128, 7);
    assert_eq!((s2.grid(), s2.windows(), s2.tokens()), ((19, 19), 361, 49));
    let s3 = stage(64, 160, 14);
    assert_eq!((s3.grid(), s3.windows(), s3.tokens()), ((5, 5), 25, 196));
    let s4 = stage(64, 320, 7);
    assert_eq!((s4.grid(), s4.windows(), s4.tokens()), ((10, 10), 100, 49));
    assert_eq!(s4.windows_elements(), 100 * 49 * 320);
}
