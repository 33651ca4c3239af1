//! Typed launchers: one Rust function per kernel that checks its arguments and launches it on
//! the GPU's stream. Model code composes these; it never names a kernel.

pub mod attention;
pub mod packet;
pub mod preprocess;
pub mod window;
