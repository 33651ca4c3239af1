//! Recognising which model (and D-FINE variant) a weights file holds from its key names and
//! tensor shapes, the way a real checkpoint would be loaded: names as in the official
//! `state_dict()`, variant inferred from shapes (MODELS.md).

use std::fmt;

use super::WeightsFile;
use crate::error::{Error, Result};

/// D-FINE sizes (COCO configs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DfineVariant {
    /// HGNetv2-B0, 2 levels, hidden 128.
    N,
    /// HGNetv2-B0, 3 levels.
    S,
    /// HGNetv2-B2.
    M,
    /// HGNetv2-B4.
    L,
    /// HGNetv2-B5, hidden 384.
    X,
}

/// A model finesam knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// MobileSAM (`vit_t`): TinyViT-5M encoder, prompt encoder, mask decoder.
    MobileSam,
    /// D-FINE detector.
    Dfine {
        /// Which size.
        variant: DfineVariant,
        /// Number of classes of the score head.
        classes: usize,
        /// Decoder layers stored.
        decoder_layers: usize,
    },
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Model::MobileSam => write!(f, "MobileSAM (vit_t)"),
            Model::Dfine {
                variant,
                classes,
                decoder_layers,
            } => write!(
                f,
                "D-FINE-{variant:?} ({classes} classes, {decoder_layers} decoder layers)"
            ),
        }
    }
}

/// Tensors every MobileSAM `vit_t` checkpoint has, with their shapes.
const MOBILESAM_ANCHORS: &[(&str, &[usize])] = &[
    ("image_encoder.patch_embed.seq.0.c.weight", &[32, 3, 3, 3]),
    ("image_encoder.neck.0.weight", &[256, 320, 1, 1]),
    ("image_encoder.neck.2.weight", &[256, 256, 3, 3]),
    (
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        &[2, 128],
    ),
    ("prompt_encoder.not_a_point_embed.weight", &[1, 256]),
    ("mask_decoder.iou_token.weight", &[1, 256]),
    ("mask_decoder.mask_tokens.weight", &[4, 256]),
];

/// Identifies the model in `file` and checks the tensors that define it are present with the
/// expected shapes. Errors name the missing or misshapen tensor.
pub fn recognise(file: &WeightsFile) -> Result<Model> {
    let has_prefix = |p: &str| file.tensors().keys().any(|k| k.starts_with(p));
    if has_prefix("image_encoder.") || has_prefix("mask_decoder.") {
        for (name, shape) in MOBILESAM_ANCHORS {
            file.expect_shape(name, shape)?;
        }
        return Ok(Model::MobileSam);
    }
    if has_prefix("backbone.") && (has_prefix("decoder.") || has_prefix("encoder.")) {
        return recognise_dfine(file);
    }
    Err(Error::WeightsFile {
        path: file.path().to_path_buf(),
        message: format!(
            "no known model: {} tensors, but neither MobileSAM (image_encoder.*, mask_decoder.*) \
             nor D-FINE (backbone.*, encoder.*, decoder.*) key names",
            file.tensors().len()
        ),
    })
}

fn recognise_dfine(file: &WeightsFile) -> Result<Model> {
    file.info("backbone.stem.stem1.conv.weight")?;
    let mut in_channels = Vec::new();
    let mut hidden = None;
    for level in 0.. {
        let name = format!("encoder.input_proj.{level}.conv.weight");
        if level > 0 && !file.tensors().contains_key(&name) {
            break;
        }
        let shape = &file.info(&name)?.shape;
        if shape.len() != 4 {
            return Err(shape_error(
                file,
                &name,
                "[hidden, in_channels, 1, 1]",
                shape,
            ));
        }
        hidden.get_or_insert(shape[0]);
        in_channels.push(shape[1]);
    }
    let hidden = hidden.unwrap_or(0);
    let variant = match (in_channels.as_slice(), hidden) {
        ([512, 1024], 128) => DfineVariant::N,
        ([256, 512, 1024], 256) => DfineVariant::S,
        ([384, 768, 1536], 256) => DfineVariant::M,
        ([512, 1024, 2048], 256) => DfineVariant::L,
        ([512, 1024, 2048], 384) => DfineVariant::X,
        _ => {
            return Err(Error::WeightsFile {
                path: file.path().to_path_buf(),
                message: format!(
                    "D-FINE key names, but encoder inputs {in_channels:?} with hidden {hidden} \
                     match no known variant (N, S, M, L, X)"
                ),
            })
        }
    };
    let decoder_layers = (0..)
        .take_while(|i| {
            file.tensors()
                .contains_key(&format!("decoder.dec_score_head.{i}.weight"))
        })
        .count();
    if decoder_layers == 0 {
        return Err(Error::MissingTensor {
            path: file.path().to_path_buf(),
            name: "decoder.dec_score_head.0.weight".into(),
        });
    }
    let head = format!("decoder.dec_score_head.{}.weight", decoder_layers - 1);
    let classes = file.info(&head)?.shape[0];
    file.info("decoder.up")?;
    file.info("decoder.reg_scale")?;
    Ok(Model::Dfine {
        variant,
        classes,
        decoder_layers,
    })
}

fn shape_error(file: &WeightsFile, name: &str, expected: &str, found: &[usize]) -> Error {
    Error::WeightsFile {
        path: file.path().to_path_buf(),
        message: format!("tensor '{name}' has shape {found:?}, expected {expected}"),
    }
}
