//! Readers for the reference fixtures `tests/parity/gen_assign.py` writes (scipy optima and
//! the official D-FINE matcher's outputs), shared by the GPU tests and the CPU fixture check.
//! The directory is `$FINESAM_FIXTURES/assign`.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use super::AssignError;
use crate::error::{Error, Result};

/// Where the fixtures are: `Ok(None)` (skip, with the reason printed) when FINESAM_FIXTURES is
/// unset, an error when it is unset but FINESAM_REQUIRE_FIXTURES=1 or the directory is absent.
pub fn fixture_dir() -> Result<Option<PathBuf>> {
    let require = std::env::var("FINESAM_REQUIRE_FIXTURES").is_ok_and(|v| v == "1");
    let Some(root) = std::env::var_os("FINESAM_FIXTURES") else {
        if require {
            return Err(bad(
                "FINESAM_FIXTURES is unset but FINESAM_REQUIRE_FIXTURES=1",
            ));
        }
        eprintln!(
            "skipping fixture checks: FINESAM_FIXTURES is unset (generate them with \
             tests/parity/gen_assign.py $FINESAM_FIXTURES/assign)"
        );
        return Ok(None);
    };
    let dir = PathBuf::from(root).join("assign");
    if !dir.is_dir() {
        return Err(bad(&format!("{} is not a directory", dir.display())));
    }
    Ok(Some(dir))
}

fn bad(message: &str) -> Error {
    Error::Assign(AssignError::Shape(format!("fixtures: {message}")))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Typed access to one fixture file.
struct File<'a> {
    path: &'a Path,
    st: SafeTensors<'a>,
}

impl<'a> File<'a> {
    fn open(path: &'a Path, bytes: &'a [u8]) -> Result<File<'a>> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(&format!("{}: {e}", path.display())))?;
        Ok(File { path, st })
    }

    fn has(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok()
    }

    fn raw(&self, name: &str, dtype: Dtype) -> Result<(Vec<usize>, &'a [u8])> {
        let t = self
            .st
            .tensor(name)
            .map_err(|e| bad(&format!("{}: {name}: {e}", self.path.display())))?;
        if t.dtype() != dtype {
            return Err(bad(&format!(
                "{}: {name} is {:?}, expected {dtype:?}",
                self.path.display(),
                t.dtype()
            )));
        }
        Ok((t.shape().to_vec(), t.data()))
    }

    fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (shape, data) = self.raw(name, Dtype::F32)?;
        let v = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((shape, v))
    }

    fn f64(&self, name: &str) -> Result<Vec<f64>> {
        let (_, data) = self.raw(name, Dtype::F64)?;
        Ok(data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }

    fn i32(&self, name: &str) -> Result<Vec<i32>> {
        let (_, data) = self.raw(name, Dtype::I32)?;
        Ok(data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn i64(&self, name: &str) -> Result<Vec<i64>> {
        let (_, data) = self.raw(name, Dtype::I64)?;
        Ok(data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }
}

/// One cost matrix with scipy's optimum.
#[derive(Debug, Clone)]
pub struct FixtureMatrix {
    /// `file:index`, for messages.
    pub name: String,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row-major f32 costs (+inf = forbidden).
    pub cost: Vec<f32>,
    /// scipy's optimal total (maximum-cardinality optimum when `unassigned > 0`).
    pub total: f64,
    /// Integer-valued costs: the total must match exactly.
    pub integer: bool,
    /// Members of the smaller side no complete matching can cover.
    pub unassigned: usize,
}

fn sorted_files(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "safetensors")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Every matrix of `random_*.safetensors` and `hard.safetensors`.
pub fn load_matrices(dir: &Path) -> Result<Vec<FixtureMatrix>> {
    let mut files = sorted_files(dir, "random_")?;
    files.extend(sorted_files(dir, "hard")?);
    if files.is_empty() {
        return Err(bad(&format!("no matrix fixtures in {}", dir.display())));
    }
    let mut out = Vec::new();
    for path in &files {
        let bytes = read(path)?;
        let f = File::open(path, &bytes)?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
        for i in 0.. {
            let key = format!("m{i}.cost");
            if !f.has(&key) {
                break;
            }
            let (shape, cost) = f.f32(&key)?;
            let reference = f.f64(&format!("m{i}.ref"))?;
            if shape.len() != 2 || reference.len() != 3 {
                return Err(bad(&format!("{stem}:{i}: malformed")));
            }
            out.push(FixtureMatrix {
                name: format!("{stem}:{i}"),
                rows: shape[0],
                cols: shape[1],
                cost,
                total: reference[0],
                integer: reference[1] != 0.0,
                unassigned: reference[2] as usize,
            });
        }
    }
    Ok(out)
}

/// One image of a matcher fixture.
#[derive(Debug, Clone)]
pub struct MatcherImage {
    /// The official cost matrix (queries x targets) after nan_to_num.
    pub cost: Vec<f32>,
    /// Targets of this image.
    pub targets: usize,
    /// Optimal totals of rounds 0..k-1 (intended top-k semantics).
    pub round_totals: Vec<f64>,
    /// The official round-0 matching: query indices.
    pub rows: Vec<i64>,
    /// The official round-0 matching: target indices.
    pub cols: Vec<i64>,
}

/// A batch of official matcher inputs and outputs.
#[derive(Debug, Clone)]
pub struct MatcherFixture {
    /// File stem.
    pub name: String,
    /// Images.
    pub batch: usize,
    /// Queries per image.
    pub queries: usize,
    /// Classes.
    pub classes: usize,
    /// `[batch, queries, classes]`.
    pub logits: Vec<f32>,
    /// `[batch, queries, 4]` cxcywh.
    pub boxes: Vec<f32>,
    /// Concatenated target labels.
    pub labels: Vec<i32>,
    /// Concatenated target boxes, cxcywh.
    pub target_boxes: Vec<f32>,
    /// `[batch + 1]`.
    pub offsets: Vec<i32>,
    /// cost_class, cost_bbox, cost_giou, alpha, gamma.
    pub weights: [f32; 5],
    /// Top-k rounds in the references.
    pub k: usize,
    /// Per image.
    pub images: Vec<MatcherImage>,
}

/// Every `matcher_*.safetensors`.
pub fn load_matchers(dir: &Path) -> Result<Vec<MatcherFixture>> {
    let mut out = Vec::new();
    for path in sorted_files(dir, "matcher_")? {
        let bytes = read(&path)?;
        let f = File::open(&path, &bytes)?;
        let (shape, logits) = f.f32("logits")?;
        if shape.len() != 3 {
            return Err(bad("matcher logits must be [batch, queries, classes]"));
        }
        let (batch, queries, classes) = (shape[0], shape[1], shape[2]);
        let offsets = f.i32("offsets")?;
        let w = f.f32("weights")?.1;
        if offsets.len() != batch + 1 || w.len() != 5 {
            return Err(bad("matcher offsets or weights malformed"));
        }
        let mut images = Vec::with_capacity(batch);
        for b in 0..batch {
            images.push(MatcherImage {
                cost: f.f32(&format!("b{b}.cost"))?.1,
                targets: (offsets[b + 1] - offsets[b]).max(0) as usize,
                round_totals: f.f64(&format!("b{b}.ref"))?,
                rows: f.i64(&format!("b{b}.rows"))?,
                cols: f.i64(&format!("b{b}.cols"))?,
            });
        }
        out.push(MatcherFixture {
            name: path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("?")
                .to_string(),
            batch,
            queries,
            classes,
            logits,
            boxes: f.f32("boxes")?.1,
            labels: f.i32("labels")?,
            target_boxes: f.f32("target_boxes")?.1,
            offsets,
            weights: [w[0], w[1], w[2], w[3], w[4]],
            k: f.i32("k")?.first().copied().unwrap_or(1).max(1) as usize,
            images,
        });
    }
    Ok(out)
}
