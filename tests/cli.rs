//! The command line: `inspect` prints what a file holds or one line naming the problem with a
//! non-zero exit; GPU commands fail cleanly where there is no GPU.

mod common;

use std::process::Command;

use common::weights::{mobilesam, temp_dir, write};

fn finesam(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_finesam"))
        .args(args)
        .output()
        .expect("the finesam binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inspect_reports_a_good_file() {
    let dir = temp_dir("cli-good");
    let path = write(&dir, "sam.safetensors", &mobilesam());
    let (ok, stdout, stderr) = finesam(&["inspect", path.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("MobileSAM (vit_t)"), "{stdout}");
    assert!(stdout.contains("tensors:    7"), "{stdout}");
}

#[test]
fn inspect_fails_with_one_line_on_bad_files() {
    let dir = temp_dir("cli-bad");
    let good = write(&dir, "sam.safetensors", &mobilesam());
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"\x89PNG\r\n\x1a\n not weights").unwrap();
    let mut specs = mobilesam();
    specs[2].values = Some(vec![f32::NAN; 256 * 256 * 9]);
    let nan = write(&dir, "nan.safetensors", &specs);

    for (path, expected) in [
        (&truncated, "not a valid safetensors file"),
        (&garbage, "not a valid safetensors file"),
        (&nan, "non-finite value (NaN)"),
    ] {
        let (ok, _, stderr) = finesam(&["inspect", path.to_str().unwrap()]);
        assert!(!ok, "inspect {} should fail", path.display());
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn gpu_commands_fail_cleanly_without_a_gpu() {
    if finesam::Gpu::probe().is_ok() {
        eprintln!("skipping: a GPU is present, so the no-GPU error path cannot be exercised");
        return;
    }
    let (ok, _, stderr) = finesam(&["run"]);
    assert!(!ok);
    assert!(stderr.starts_with("finesam: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn sam_rejects_missing_prompts_and_accepts_boxes_with_points() {
    let dir = temp_dir("cli-sam");
    let out = dir.join("out.json");
    let base = [
        "sam",
        "--weights",
        "w.safetensors",
        "--image",
        "i.png",
        "--out",
        out.to_str().unwrap(),
    ];
    let (ok, _, stderr) = finesam(&base);
    assert!(!ok);
    assert!(stderr.contains("give --box or --point prompts"), "{stderr}");
    let mixed: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--box", "1,2,3,4", "--point", "5,6,1"])
        .collect();
    // Boxes with points are one prompt kind (each box carries the points): the command gets
    // past the prompts and stops at the missing image.
    let (ok, _, stderr) = finesam(&mixed);
    assert!(!ok);
    assert!(
        stderr.contains("i.png") && !stderr.contains("prompt"),
        "{stderr}"
    );
    let bad: Vec<&str> = base.iter().copied().chain(["--box", "1,2,3"]).collect();
    let (ok, _, stderr) = finesam(&bad);
    assert!(!ok);
    assert!(
        stderr.contains("needs 4 comma-separated numbers"),
        "{stderr}"
    );
}
