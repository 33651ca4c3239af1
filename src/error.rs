//! The one error type of the crate. Every variant names the problem precisely enough to act on
//! it (file, tensor, expected vs found) and nothing in the library panics on bad input.

use std::path::PathBuf;

/// Everything that can go wrong in finesam.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CUDA driver library (libcuda) could not be loaded.
    #[error("no NVIDIA driver: libcuda could not be loaded (finesam needs an NVIDIA GPU and its driver)")]
    NoDriver,
    /// The driver loaded but reported no usable device.
    #[error("no CUDA device available: {0}")]
    NoDevice(String),
    /// A CUDA driver call failed.
    #[error("CUDA error during {op}: {message}")]
    Cuda { op: &'static str, message: String },
    /// A kernel was launched with arguments that do not fit it.
    #[error("kernel {kernel}: {message}")]
    Launch {
        kernel: &'static str,
        message: String,
    },
    /// The input frame is unusable (empty, oversized, inconsistent stride or buffer).
    #[error("bad frame: {0}")]
    Frame(String),
    /// A weights file could not be read or is not a valid safetensors file.
    #[error("weights file {path}: {message}")]
    WeightsFile { path: PathBuf, message: String },
    /// A tensor the model needs is absent from the weights file.
    #[error("weights file {path}: missing tensor '{name}'")]
    MissingTensor { path: PathBuf, name: String },
    /// A tensor has the wrong shape.
    #[error("weights file {path}: tensor '{name}' has shape {found:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor has a dtype finesam cannot use.
    #[error("weights file {path}: tensor '{name}' has dtype {dtype}, expected F32, F16 or BF16")]
    TensorDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    /// A tensor holds NaN or infinity.
    #[error("weights file {path}: tensor '{name}' holds a non-finite value ({value}) at element {index}")]
    NonFinite {
        path: PathBuf,
        name: String,
        index: usize,
        value: f32,
    },
    /// The arena or packet was asked for something outside its plan.
    #[error("plan error: {0}")]
    Plan(String),
    /// Prompts for the mask decoder are unusable (none, too many, non-finite, bad labels).
    #[error("bad prompts: {0}")]
    Prompt(String),
    /// A result packet's bytes do not follow the documented layout.
    #[error("bad result packet: {0}")]
    Packet(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An image file could not be decoded.
    #[error("image {path}: {message}")]
    Image { path: PathBuf, message: String },
    /// An assignment (auction, matcher, tracker) has no result; see `assign::AssignError`.
    #[error("assignment: {0}")]
    Assign(#[from] crate::assign::AssignError),
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a CUDA driver error with the operation that failed.
    pub(crate) fn cuda(op: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
        move |e| Error::Cuda {
            op,
            message: e.to_string(),
        }
    }
}
