//! Host side of the MobileSAM image encoder: the tensors it reads (official names and shapes),
//! loading a complete random `vit_t` state dict into a plan, FLOPs and arena size, and typed
//! errors for missing or misshapen tensors. Runs without a GPU.

#[path = "common/encoder_weights.rs"]
mod encoder_weights;

use encoder_weights::{write_random_encoder_weights, Damage};
use finesam::models::mobilesam::encoder::{required_tensors, EncoderPlan, EncoderStage};
use finesam::weights::WeightsFile;
use finesam::Error;

fn temp_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("finesam-encoder-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn required_tensors_follow_the_official_names() {
    let tensors = required_tensors("image_encoder.");
    let get = |name: &str| {
        tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("{name} not read"))
    };
    assert_eq!(
        get("image_encoder.patch_embed.seq.0.c.weight"),
        [32, 3, 3, 3]
    );
    assert_eq!(get("image_encoder.patch_embed.seq.2.bn.running_var"), [64]);
    assert_eq!(
        get("image_encoder.layers.0.blocks.1.conv2.c.weight"),
        [256, 1, 3, 3]
    );
    assert_eq!(
        get("image_encoder.layers.0.downsample.conv3.c.weight"),
        [128, 128, 1, 1]
    );
    assert_eq!(
        get("image_encoder.layers.1.blocks.0.attn.qkv.weight"),
        [384, 128]
    );
    assert_eq!(
        get("image_encoder.layers.2.blocks.5.attn.attention_biases"),
        [5, 196]
    );
    assert_eq!(
        get("image_encoder.layers.2.downsample.conv2.c.weight"),
        [320, 1, 3, 3]
    );
    assert_eq!(
        get("image_encoder.layers.3.blocks.1.mlp.fc2.weight"),
        [320, 1280]
    );
    assert_eq!(
        get("image_encoder.layers.3.blocks.1.local_conv.bn.bias"),
        [320]
    );
    assert_eq!(get("image_encoder.neck.2.weight"), [256, 256, 3, 3]);
    assert_eq!(get("image_encoder.neck.3.bias"), [256]);
    // No unused heads (norm_head, head) and no buffers outside the state dict.
    assert!(tensors
        .iter()
        .all(|(n, _)| !n.contains("head.") && !n.contains("bias_idxs")));
    let values: usize = tensors
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    // 6.07 M parameters minus the classifier head (320 * 1000 + 1000) and norm_head (640),
    // plus BatchNorm running statistics.
    println!("{} tensors, {values} values", tensors.len());
    assert!((5_700_000..6_000_000).contains(&values), "{values}");
}

#[test]
fn random_weights_plan_and_report_flops() {
    let path = temp_file("random.safetensors");
    write_random_encoder_weights(&path, 7, Damage::default());
    let file = WeightsFile::open(&path).unwrap();
    let plan = EncoderPlan::build(&file).unwrap();
    let mut total = 0.0;
    println!("{:<12} {:>10} {:>9}", "stage", "GFLOP", "launches");
    for stage in EncoderStage::ALL {
        let gflop = plan.flops(stage) * 1e-9;
        total += gflop;
        println!(
            "{:<12} {gflop:>10.2} {:>9}",
            stage.name(),
            plan.launches(stage)
        );
        assert!(plan.launches(stage) > 0);
    }
    let (arena, unshared) = plan.arena_bytes().unwrap();
    println!(
        "total {total:.2} GFLOP; arena {:.1} MiB (unshared {:.1} MiB); weights {:.1} MiB",
        arena as f64 / 1048576.0,
        unshared as f64 / 1048576.0,
        plan.weight_bytes() as f64 / 1048576.0
    );
    // 2 FLOPs per multiply-add, attention over padded windows: MODELS.md's 77.5 GFLOP.
    assert!((77.0..78.0).contains(&total), "{total}");
    // TinyViT blocks are 6 launches where the MLP is fused (128 and 160 channels), 7 at 320;
    // layers.1 and .2 end with a 3-launch PatchMerging.
    let launches = [
        EncoderStage::Layer1,
        EncoderStage::Layer2,
        EncoderStage::Layer3,
    ]
    .map(|s| plan.launches(s));
    assert_eq!(launches, [2 * 6 + 3, 6 * 6 + 3, 2 * 7]);
    // A fused MLP's hidden activations never reach the arena.
    let names: Vec<&str> = plan.activation_names().collect();
    let fc1_out = |layer: usize, block: usize| {
        let name = format!("layers.{layer}.blocks.{block}.mlp.fc1 out");
        names.contains(&name.as_str())
    };
    assert!((0..2).all(|b| !fc1_out(1, b)) && (0..6).all(|b| !fc1_out(2, b)));
    assert!((0..2).all(|b| fc1_out(3, b)));
    assert!(
        arena < unshared / 2,
        "liveness sharing should at least halve the arena"
    );
}

#[test]
fn missing_and_misshapen_tensors_are_typed_errors() {
    let missing = "image_encoder.layers.2.blocks.3.attn.attention_biases";
    let path = temp_file("missing.safetensors");
    let damage = Damage {
        drop: Some(missing),
        ..Damage::default()
    };
    write_random_encoder_weights(&path, 1, damage);
    let err = EncoderPlan::build(&WeightsFile::open(&path).unwrap())
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == missing),
        "{err:?}"
    );

    let misshapen = "image_encoder.layers.1.blocks.0.mlp.fc1.weight";
    let path = temp_file("misshapen.safetensors");
    let damage = Damage {
        reshape: Some(misshapen),
        ..Damage::default()
    };
    write_random_encoder_weights(&path, 1, damage);
    let err = EncoderPlan::build(&WeightsFile::open(&path).unwrap())
        .err()
        .unwrap();
    match &err {
        Error::TensorShape {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, misshapen);
            assert_eq!(expected, &[512, 128]);
            assert_eq!(found, &[513, 128]);
        }
        other => panic!("{other:?}"),
    }
    println!("{err}");
}
