//! MobileSAM (`vit_t`): prompt encoder and mask decoder.

pub mod decoder;
pub mod prompt;
