//! Model plans built from the typed launchers in `crate::ops`.

pub mod mobilesam;
