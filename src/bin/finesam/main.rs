//! The finesam command line: `run` (the per-frame pipeline on an image or a test pattern),
//! `bench` (per-stage GPU timings, with the PyTorch peer's numbers beside them) and `inspect`
//! (what a weights file holds).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod sam;
use finesam::weights::{recognise, WeightsFile};
use finesam::{Error, Frame, Pipeline, PipelineConfig, PixelFormat, Result};

#[derive(Parser)]
#[command(name = "finesam", version, about = "D-FINE + MobileSAM on the GPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the per-frame pipeline on an image (or a 1920x1080 test pattern) and print the packet.
    Run {
        /// Image file (PNG or JPEG); a synthetic 1920x1080 RGB frame if absent.
        #[arg(long)]
        image: Option<PathBuf>,
        /// Write the raw result packet here.
        #[arg(long)]
        packet: Option<PathBuf>,
    },
    /// Time each stage on the GPU (CUDA events) and print a table.
    Bench {
        /// Frame width of the synthetic frame.
        #[arg(long, default_value_t = 1920)]
        width: u32,
        /// Frame height of the synthetic frame.
        #[arg(long, default_value_t = 1080)]
        height: u32,
        /// Timed repetitions.
        #[arg(long, default_value_t = 200)]
        iterations: usize,
        /// JSON object {row name: milliseconds} of the PyTorch peer timed in the same session;
        /// rows whose name starts with a key get a ratio column.
        #[arg(long)]
        peer: Option<PathBuf>,
    },
    /// Segment an image with MobileSAM from box and/or point prompts; masks as COCO RLE in JSON.
    Sam {
        /// MobileSAM (`vit_t`) weights as .safetensors (weights/convert.py).
        #[arg(long)]
        weights: PathBuf,
        /// Image file (PNG or JPEG).
        #[arg(long)]
        image: PathBuf,
        /// A box prompt `x0,y0,x1,y1` in image pixels; repeat for several objects.
        #[arg(long = "box", value_parser = parse_box)]
        boxes: Vec<[f32; 4]>,
        /// A point `x,y,label` (label 1 foreground, 0 background); all points form one prompt,
        /// or, with --box, every box prompt carries all the points.
        #[arg(long = "point", value_parser = parse_point)]
        points: Vec<[f32; 3]>,
        /// Three masks per prompt instead of one.
        #[arg(long)]
        multimask: bool,
        /// Where to write the JSON result.
        #[arg(long)]
        out: PathBuf,
        /// Also write the image with the masks blended in.
        #[arg(long)]
        overlay: Option<PathBuf>,
    },
    /// Print what a .safetensors weights file holds; non-zero exit on a bad file.
    Inspect {
        /// The weights file.
        weights: PathBuf,
    },
}

fn parse_floats<const N: usize>(text: &str, what: &str) -> std::result::Result<[f32; N], String> {
    let values: Vec<f32> = text
        .split(',')
        .map(|v| v.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("{what} '{text}': {e}"))?;
    values
        .try_into()
        .map_err(|_| format!("{what} '{text}' needs {N} comma-separated numbers"))
}

fn parse_box(text: &str) -> std::result::Result<[f32; 4], String> {
    parse_floats(text, "box")
}

fn parse_point(text: &str) -> std::result::Result<[f32; 3], String> {
    parse_floats(text, "point")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run { image, packet } => run(image.as_deref(), packet.as_deref()),
        Command::Bench {
            width,
            height,
            iterations,
            peer,
        } => bench(width, height, iterations, peer.as_deref()),
        Command::Inspect { weights } => inspect(&weights),
        Command::Sam {
            weights,
            image,
            boxes,
            points,
            multimask,
            out,
            overlay,
        } => sam::run(&sam::Request {
            weights: &weights,
            image: &image,
            boxes: &boxes,
            points: &points,
            multimask,
            out: &out,
            overlay: overlay.as_deref(),
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("finesam: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A deterministic RGB test pattern (gradients and a checkerboard), so `run` and `bench` need no
/// input files.
fn test_pattern(width: u32, height: u32) -> Vec<u8> {
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            let check = if (x / 64 + y / 64) % 2 == 0 { 255 } else { 0 };
            data.extend_from_slice(&[
                (x * 255 / width.max(1)) as u8,
                (y * 255 / height.max(1)) as u8,
                check,
            ]);
        }
    }
    data
}

pub(crate) fn load_image(path: &Path) -> Result<(Vec<u8>, u32, u32, PixelFormat)> {
    let image = image::open(path).map_err(|e| Error::Image {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let (w, h) = (image.width(), image.height());
    Ok(match image {
        image::DynamicImage::ImageLuma8(gray) => (gray.into_raw(), w, h, PixelFormat::Gray8),
        other => (other.to_rgb8().into_raw(), w, h, PixelFormat::Rgb8),
    })
}

fn run(image: Option<&Path>, packet_out: Option<&Path>) -> Result<()> {
    let (data, width, height, format) = match image {
        Some(path) => load_image(path)?,
        None => (test_pattern(1920, 1080), 1920, 1080, PixelFormat::Rgb8),
    };
    let mut pipeline = Pipeline::new(PipelineConfig {
        max_width: width.max(1),
        max_height: height.max(1),
        ..PipelineConfig::default()
    })?;
    let before = pipeline.gpu().counters();
    let frame = Frame::packed(&data, width, height, format);
    let packet = pipeline.process(&frame)?;
    let header = *packet.header();
    let detections = packet.detections().count();
    let masks = packet.masks().count();
    if let Some(path) = packet_out {
        std::fs::write(path, packet.as_bytes()).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let cost = pipeline.gpu().counters().since(&before);
    println!("device: {}", pipeline.gpu().name());
    println!(
        "frame {}x{} {:?} -> packet v{} ({} bytes): sequence {}, SAM extent {}x{}, {} detections, {} masks",
        header.frame_width,
        header.frame_height,
        format,
        header.version,
        header.total_bytes,
        header.sequence,
        header.sam_width,
        header.sam_height,
        detections,
        masks
    );
    println!(
        "copies this frame: {} upload ({} bytes), {} download ({} bytes); device allocations: {}",
        cost.uploads,
        cost.upload_bytes,
        cost.downloads,
        cost.download_bytes,
        cost.device_allocations
    );
    println!(
        "status: this frame pipeline runs preprocessing and packet assembly; MobileSAM runs through `finesam sam`; D-FINE is not built yet"
    );
    Ok(())
}

fn bench(width: u32, height: u32, iterations: usize, peer: Option<&Path>) -> Result<()> {
    let peer: BTreeMap<String, f64> = match peer {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
            serde_json::from_str(&text).map_err(|e| Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?
        }
        None => BTreeMap::new(),
    };
    let data = test_pattern(width, height);
    let mut pipeline = Pipeline::new(PipelineConfig {
        max_width: width.max(1),
        max_height: height.max(1),
        ..PipelineConfig::default()
    })?;
    let frame = Frame::packed(&data, width, height, PixelFormat::Rgb8);
    let rows = pipeline.time_stages(&frame, iterations)?;
    println!(
        "finesam bench on {} ({iterations} iterations, medians)",
        pipeline.gpu().name()
    );
    println!(
        "{:<44} {:>11} {:>11} {:>12} {:>9}",
        "stage", "median ms", "min ms", "PyTorch ms", "speedup"
    );
    for row in rows {
        let peer_ms = peer
            .iter()
            .find(|(key, _)| row.name.starts_with(key.as_str()))
            .map(|(_, &ms)| ms);
        let (peer_col, ratio_col) = match peer_ms {
            Some(ms) => (format!("{ms:.4}"), format!("{:.1}x", ms / row.median_ms)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<44} {:>11.4} {:>11.4} {:>12} {:>9}",
            row.name, row.median_ms, row.min_ms, peer_col, ratio_col
        );
    }
    Ok(())
}

fn inspect(path: &Path) -> Result<()> {
    let file = WeightsFile::open(path)?;
    file.validate_finite()?;
    let model = recognise(&file)?;
    let mut by_dtype: BTreeMap<String, usize> = BTreeMap::new();
    for info in file.tensors().values() {
        *by_dtype.entry(format!("{:?}", info.dtype)).or_default() += 1;
    }
    println!("{}", path.display());
    println!("  model:      {model}");
    println!("  tensors:    {} ({by_dtype:?})", file.tensors().len());
    println!(
        "  parameters: {} ({:.2} M)",
        file.parameter_count(),
        file.parameter_count() as f64 / 1e6
    );
    println!("  all values finite");
    Ok(())
}
