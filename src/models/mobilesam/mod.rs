//! MobileSAM (`vit_t`): TinyViT image encoder, prompt encoder and mask decoder.

pub mod decoder;
pub mod encoder;
pub mod prompt;
pub mod sam;

pub use prompt::Prompts;
pub use sam::{MobileSam, SamConfig};
