//! Weights: `.safetensors` files with the official PyTorch key names, validated on the host and
//! uploaded once, as fp16, into a persistent device region of their own.

pub mod recognise;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::gpu::{DeviceBuffer, DevicePtr, Gpu};
pub use recognise::{recognise, Model};

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// Anything else (e.g. BatchNorm's int64 `num_batches_tracked`, which real checkpoints
    /// carry): listed, never read as weights.
    Other(Dtype),
}

impl StoredDtype {
    fn size(self) -> usize {
        match self {
            StoredDtype::F32 => 4,
            StoredDtype::F16 | StoredDtype::Bf16 => 2,
            StoredDtype::Other(dtype) => dtype.bitsize().div_ceil(8),
        }
    }

    /// Whether finesam can read the tensor as weights.
    pub fn is_float(self) -> bool {
        !matches!(self, StoredDtype::Other(_))
    }
}

/// Name-independent facts about one stored tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: StoredDtype,
    /// Shape.
    pub shape: Vec<usize>,
    range: (usize, usize),
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A memory-mapped, parsed safetensors file.
pub struct WeightsFile {
    path: PathBuf,
    map: Mmap,
    tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for WeightsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl WeightsFile {
    /// Opens and parses `path`. Fails on unreadable files, files that are not safetensors
    /// (bad or truncated header, offsets past the end) and dtypes other than F32/F16/BF16.
    pub fn open(path: impl AsRef<Path>) -> Result<WeightsFile> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        // SAFETY: the file is opened read-only; like every mmap user we assume no one truncates
        // it while we hold the map.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let parsed = SafeTensors::deserialize(&map).map_err(|e| Error::WeightsFile {
            path: path.clone(),
            message: format!("not a valid safetensors file ({e})"),
        })?;
        let base = map.as_ptr() as usize;
        let mut tensors = BTreeMap::new();
        for (name, view) in parsed.iter() {
            let dtype = match view.dtype() {
                Dtype::F32 => StoredDtype::F32,
                Dtype::F16 => StoredDtype::F16,
                Dtype::BF16 => StoredDtype::Bf16,
                other => StoredDtype::Other(other),
            };
            let start = view.data().as_ptr() as usize - base;
            tensors.insert(
                name.to_string(),
                TensorInfo {
                    dtype,
                    shape: view.shape().to_vec(),
                    range: (start, start + view.data().len()),
                },
            );
        }
        Ok(WeightsFile { path, map, tensors })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tensors by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// Total number of elements over all tensors.
    pub fn parameter_count(&self) -> usize {
        self.tensors.values().map(TensorInfo::numel).sum()
    }

    /// The tensor's facts, or a `MissingTensor` error naming it.
    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })
    }

    /// Checks that `name` exists with exactly `shape`.
    pub fn expect_shape(&self, name: &str, shape: &[usize]) -> Result<&TensorInfo> {
        let info = self.info(name)?;
        if info.shape != shape {
            return Err(Error::TensorShape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        Ok(info)
    }

    /// The tensor's values converted to f32, after checking they are all finite.
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        let bytes = &self.map[info.range.0..info.range.1];
        let values: Vec<f32> = match info.dtype {
            StoredDtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            StoredDtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            StoredDtype::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            StoredDtype::Other(dtype) => {
                return Err(Error::TensorDtype {
                    path: self.path.clone(),
                    name: name.to_string(),
                    dtype: format!("{dtype:?}"),
                })
            }
        };
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFinite {
                path: self.path.clone(),
                name: name.to_string(),
                index,
                value,
            });
        }
        Ok(values)
    }

    /// Checks every float tensor for NaN and infinity (reads the whole file once).
    pub fn validate_finite(&self) -> Result<()> {
        self.tensors
            .iter()
            .filter(|(_, info)| info.dtype.is_float())
            .try_for_each(|(name, _)| self.to_f32(name).map(|_| ()))
    }

    /// The tensor as fp16, failing on values fp16 cannot represent.
    pub fn to_f16(&self, name: &str) -> Result<Vec<f16>> {
        let values = self.to_f32(name)?;
        if let Some((index, &value)) = values
            .iter()
            .enumerate()
            .find(|(_, v)| v.abs() > f16::MAX.to_f32())
        {
            return Err(Error::WeightsFile {
                path: self.path.clone(),
                message: format!(
                    "tensor '{name}' element {index} = {value} overflows fp16 (max 65504)"
                ),
            });
        }
        Ok(values.into_iter().map(f16::from_f32).collect())
    }

    /// Bytes of a tensor as stored.
    pub fn stored_bytes(&self, name: &str) -> Result<usize> {
        let info = self.info(name)?;
        Ok(info.numel() * info.dtype.size())
    }
}

/// Element type of an uploaded tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceDtype {
    /// IEEE half: weights of GEMMs, convolutions and attention.
    F16,
    /// 32-bit float: biases, norm scales and shifts, small tables kept exact.
    F32,
}

/// Where one uploaded tensor lives in the weights region.
#[derive(Debug, Clone)]
pub struct DeviceTensor {
    /// Device address (256-byte aligned).
    pub ptr: DevicePtr,
    /// Shape as given to the builder.
    pub shape: Vec<usize>,
    /// Element type on the device.
    pub dtype: DeviceDtype,
}

impl DeviceTensor {
    /// Bytes the tensor occupies on the device.
    pub fn bytes(&self) -> usize {
        let size = match self.dtype {
            DeviceDtype::F16 => 2,
            DeviceDtype::F32 => 4,
        };
        self.shape.iter().product::<usize>() * size
    }
}

/// Collects host tensors (already transformed: BatchNorm folded, layouts changed) and uploads
/// them into one persistent device allocation with one copy.
#[derive(Debug, Default)]
pub struct WeightStoreBuilder {
    bytes: Vec<u8>,
    tensors: BTreeMap<String, (usize, Vec<usize>, DeviceDtype)>,
}

impl WeightStoreBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, name: &str, shape: &[usize], dtype: DeviceDtype, data: &[u8]) -> Result<()> {
        let size = match dtype {
            DeviceDtype::F16 => 2,
            DeviceDtype::F32 => 4,
        };
        let expected = shape.iter().product::<usize>() * size;
        if data.len() != expected {
            return Err(Error::Plan(format!(
                "weight '{name}': {} bytes given for shape {shape:?} ({expected} expected)",
                data.len()
            )));
        }
        if self.tensors.contains_key(name) {
            return Err(Error::Plan(format!("weight '{name}' added twice")));
        }
        let offset = self.bytes.len();
        self.bytes.extend_from_slice(data);
        // 256-byte alignment per tensor, as in the arena.
        self.bytes.resize(self.bytes.len().div_ceil(256) * 256, 0);
        self.tensors
            .insert(name.to_string(), (offset, shape.to_vec(), dtype));
        Ok(())
    }

    /// Adds an fp16 tensor; values beyond the fp16 range are an error.
    pub fn add_f16(&mut self, name: &str, shape: &[usize], values: &[f32]) -> Result<()> {
        if let Some((index, value)) = values
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite() || v.abs() > f16::MAX.to_f32())
        {
            return Err(Error::Plan(format!(
                "weight '{name}' element {index} = {value} does not fit fp16"
            )));
        }
        let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
        self.push(name, shape, DeviceDtype::F16, bytemuck::cast_slice(&halves))
    }

    /// Adds an f32 tensor; non-finite values are an error.
    pub fn add_f32(&mut self, name: &str, shape: &[usize], values: &[f32]) -> Result<()> {
        if let Some((index, value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::Plan(format!(
                "weight '{name}' element {index} = {value} is not finite"
            )));
        }
        self.push(name, shape, DeviceDtype::F32, bytemuck::cast_slice(values))
    }

    /// Host bytes collected so far (the size of the device region).
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// One allocation, one upload.
    pub fn upload(self, gpu: &Gpu) -> Result<DeviceWeights> {
        let buffer = gpu.alloc(self.bytes.len())?;
        gpu.upload(buffer.ptr(), &self.bytes)?;
        gpu.synchronize()?;
        let tensors = self
            .tensors
            .into_iter()
            .map(|(name, (offset, shape, dtype))| {
                let ptr = buffer.ptr() + offset as DevicePtr;
                (name, DeviceTensor { ptr, shape, dtype })
            })
            .collect();
        Ok(DeviceWeights { buffer, tensors })
    }
}

/// The persistent weights region: one device allocation holding every tensor.
pub struct DeviceWeights {
    buffer: DeviceBuffer,
    tensors: BTreeMap<String, DeviceTensor>,
}

impl DeviceWeights {
    /// Converts `names` of `file` (all tensors if empty) to fp16 and uploads them in one copy,
    /// names and shapes unchanged.
    pub fn upload(gpu: &Gpu, file: &WeightsFile, names: &[&str]) -> Result<DeviceWeights> {
        let names: Vec<&str> = if names.is_empty() {
            file.tensors()
                .iter()
                .filter(|(_, info)| info.dtype.is_float())
                .map(|(name, _)| name.as_str())
                .collect()
        } else {
            names.to_vec()
        };
        let mut builder = WeightStoreBuilder::new();
        for name in names {
            let shape = file.info(name)?.shape.clone();
            let values = file.to_f32(name)?;
            builder
                .add_f16(name, &shape, &values)
                .map_err(|e| Error::WeightsFile {
                    path: file.path().to_path_buf(),
                    message: e.to_string().replace("plan error: ", ""),
                })?;
        }
        builder.upload(gpu)
    }

    /// An uploaded tensor.
    pub fn get(&self, name: &str) -> Option<&DeviceTensor> {
        self.tensors.get(name)
    }

    /// An uploaded tensor, or an error naming it.
    pub fn require(&self, name: &str) -> Result<&DeviceTensor> {
        self.get(name)
            .ok_or_else(|| Error::Plan(format!("weight '{name}' was not uploaded")))
    }

    /// Bytes of the weights region.
    pub fn bytes(&self) -> usize {
        self.buffer.len()
    }
}
