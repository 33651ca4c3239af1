//! Weights files: recognition of MobileSAM and every D-FINE variant from key names and shapes,
//! and a typed error naming the problem for every kind of bad file.

mod common;

use common::weights::{dfine, mobilesam, spec, temp_dir, values, write};
use finesam::weights::recognise::DfineVariant;
use finesam::weights::{recognise, Model, StoredDtype, WeightsFile};
use finesam::Error;
use safetensors::Dtype;

#[test]
fn recognises_mobilesam() {
    let dir = temp_dir("recognise-sam");
    let path = write(&dir, "sam.safetensors", &mobilesam());
    let file = WeightsFile::open(&path).unwrap();
    assert_eq!(recognise(&file).unwrap(), Model::MobileSam);
    file.validate_finite().unwrap();
    assert_eq!(
        file.to_f16("mask_decoder.iou_token.weight").unwrap().len(),
        256
    );
}

#[test]
fn recognises_every_dfine_variant() {
    let dir = temp_dir("recognise-dfine");
    for (inputs, hidden, layers, variant) in [
        (&[512, 1024][..], 128, 3, DfineVariant::N),
        (&[256, 512, 1024][..], 256, 3, DfineVariant::S),
        (&[384, 768, 1536][..], 256, 4, DfineVariant::M),
        (&[512, 1024, 2048][..], 256, 6, DfineVariant::L),
        (&[512, 1024, 2048][..], 384, 6, DfineVariant::X),
    ] {
        let path = write(
            &dir,
            &format!("{variant:?}.safetensors"),
            &dfine(inputs, hidden, layers),
        );
        let model = recognise(&WeightsFile::open(&path).unwrap()).unwrap();
        assert_eq!(
            model,
            Model::Dfine {
                variant,
                classes: 80,
                decoder_layers: layers
            }
        );
    }
}

#[test]
fn reads_f32_f16_and_bf16() {
    let dir = temp_dir("dtypes");
    let mut specs = mobilesam();
    specs[0].dtype = Dtype::F16;
    specs[1].dtype = Dtype::BF16;
    let path = write(&dir, "mixed.safetensors", &specs);
    let file = WeightsFile::open(&path).unwrap();
    assert_eq!(file.info(&specs[0].name).unwrap().dtype, StoredDtype::F16);
    assert_eq!(file.info(&specs[1].name).unwrap().dtype, StoredDtype::Bf16);
    for spec in &specs {
        let expected = values(spec);
        let got = file.to_f32(&spec.name).unwrap();
        // bf16 keeps 8 significant bits, f16 11.
        let tol = match spec.dtype {
            Dtype::BF16 => 4e-3,
            Dtype::F16 => 5e-4,
            _ => 0.0,
        };
        for (g, e) in got.iter().zip(&expected) {
            assert!(
                (g - e).abs() <= tol * e.abs().max(1e-2),
                "{}: {g} vs {e}",
                spec.name
            );
        }
    }
    // Integer tensors (BatchNorm's num_batches_tracked in real checkpoints) are listed and
    // skipped by validation, but reading one as weights is a typed error.
    let mut specs = mobilesam();
    specs[0].dtype = Dtype::I64;
    let ints = write(&dir, "ints.safetensors", &specs);
    let file = WeightsFile::open(&ints).unwrap();
    file.validate_finite().unwrap();
    assert_eq!(recognise(&file).unwrap(), Model::MobileSam);
    let err = file.to_f32(&specs[0].name).unwrap_err();
    assert!(matches!(err, Error::TensorDtype { .. }), "{err:?}");
}

#[test]
fn bad_files_are_typed_errors() {
    let dir = temp_dir("bad-weights");
    let good = write(&dir, "good.safetensors", &mobilesam());
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let err = WeightsFile::open(&truncated).unwrap_err();
    assert!(matches!(err, Error::WeightsFile { .. }), "{err:?}");
    assert!(
        err.to_string().contains("not a valid safetensors file"),
        "{err}"
    );

    let text = dir.join("notes.safetensors");
    std::fs::write(&text, "this is not a weights file at all").unwrap();
    assert!(matches!(
        WeightsFile::open(&text),
        Err(Error::WeightsFile { .. })
    ));

    let mut header = bytes.clone();
    header[8] = b'!'; // the JSON header must start with '{'
    let bad_header = dir.join("bad-header.safetensors");
    std::fs::write(&bad_header, header).unwrap();
    assert!(matches!(
        WeightsFile::open(&bad_header),
        Err(Error::WeightsFile { .. })
    ));

    let missing = dir.join("missing.safetensors");
    assert!(matches!(WeightsFile::open(&missing), Err(Error::Io { .. })));

    let mut specs = mobilesam();
    specs[3].values = Some(
        vec![0.0, 1.0, f32::NAN, 0.0]
            .into_iter()
            .cycle()
            .take(256)
            .collect(),
    );
    let nan = write(&dir, "nan.safetensors", &specs);
    let err = WeightsFile::open(&nan)
        .unwrap()
        .validate_finite()
        .unwrap_err();
    match &err {
        Error::NonFinite { name, index, .. } => {
            assert_eq!(
                name,
                "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
            );
            assert_eq!(*index, 2);
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }

    let mut specs = mobilesam();
    specs.remove(5);
    let lacking = write(&dir, "lacking.safetensors", &specs);
    let err = recognise(&WeightsFile::open(&lacking).unwrap()).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == "mask_decoder.iou_token.weight"),
        "{err:?}"
    );

    let mut specs = mobilesam();
    specs[1] = spec("image_encoder.neck.0.weight", &[256, 160, 1, 1]);
    let misshapen = write(&dir, "misshapen.safetensors", &specs);
    let err = recognise(&WeightsFile::open(&misshapen).unwrap()).unwrap_err();
    assert!(
        matches!(&err, Error::TensorShape { expected, found, .. } if expected == &[256, 320, 1, 1] && found == &[256, 160, 1, 1]),
        "{err:?}"
    );

    let unknown = write(&dir, "unknown.safetensors", &[spec("fc.weight", &[4, 4])]);
    let err = recognise(&WeightsFile::open(&unknown).unwrap()).unwrap_err();
    assert!(err.to_string().contains("no known model"), "{err}");

    let mut specs = mobilesam();
    specs[0].values = Some(vec![1e6; 32 * 27]);
    let huge = write(&dir, "huge.safetensors", &specs);
    let err = WeightsFile::open(&huge)
        .unwrap()
        .to_f16("image_encoder.patch_embed.seq.0.c.weight")
        .unwrap_err();
    assert!(err.to_string().contains("overflows fp16"), "{err}");
}

#[test]
fn weight_store_builder_rejects_bad_tensors() {
    use finesam::weights::WeightStoreBuilder;
    let mut builder = WeightStoreBuilder::new();
    builder
        .add_f16("a", &[2, 2], &[1.0, 2.0, 3.0, 4.0])
        .unwrap();
    builder.add_f32("b", &[3], &[0.5, -0.5, 1e30]).unwrap();
    // 256-byte aligned entries: 8 bytes of fp16 padded to 256, then 12 bytes.
    assert_eq!(builder.bytes(), 512);
    let errors = [
        builder.add_f16("a", &[1], &[1.0]).unwrap_err(),
        builder.add_f16("c", &[3], &[1.0, 2.0]).unwrap_err(),
        builder.add_f16("d", &[1], &[1e6]).unwrap_err(),
        builder.add_f32("e", &[2], &[1.0, f32::NAN]).unwrap_err(),
    ];
    for (err, expected) in
        errors
            .iter()
            .zip(["added twice", "expected", "does not fit fp16", "not finite"])
    {
        assert!(
            err.to_string().contains(expected),
            "'{err}' lacks '{expected}'"
        );
    }
}
