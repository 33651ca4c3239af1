//! `finesam sam`: MobileSAM on one image from the command line. Masks go to JSON as COCO RLE
//! (`pycocotools.mask.decode` reads them) with their predicted IoU; `--overlay` writes the image
//! with the masks blended in.

use std::path::Path;

use finesam::coco::{rle_counts, rle_string};
use finesam::models::mobilesam::{MobileSam, Prompts, SamConfig};
use finesam::{Error, Frame, PixelFormat, Result};
use serde_json::json;

pub(crate) struct Request<'a> {
    pub weights: &'a Path,
    pub image: &'a Path,
    pub boxes: &'a [[f32; 4]],
    pub points: &'a [[f32; 3]],
    pub multimask: bool,
    pub out: &'a Path,
    pub overlay: Option<&'a Path>,
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn run(request: &Request<'_>) -> Result<()> {
    let (coords, labels): (Vec<[f32; 2]>, Vec<f32>) =
        request.points.iter().map(|p| ([p[0], p[1]], p[2])).unzip();
    // With boxes, every box prompt carries all the points.
    let (box_coords, box_labels) = (
        coords.repeat(request.boxes.len()),
        labels.repeat(request.boxes.len()),
    );
    let prompts = match (request.boxes.is_empty(), request.points.is_empty()) {
        (false, true) => Prompts::Boxes(request.boxes),
        (true, false) => Prompts::Points {
            coords: &coords,
            labels: &labels,
            per_prompt: coords.len(),
        },
        (false, false) => Prompts::BoxesWithPoints {
            boxes: request.boxes,
            coords: &box_coords,
            labels: &box_labels,
            per_prompt: coords.len(),
        },
        (true, true) => return Err(Error::Prompt("give --box or --point prompts".into())),
    };
    let (data, width, height, format) = crate::load_image(request.image)?;
    let mut sam = MobileSam::load(
        request.weights,
        SamConfig {
            max_width: width,
            max_height: height,
            max_prompts: prompts.count().max(1),
            ..SamConfig::default()
        },
    )?;
    sam.set_frame(&Frame::packed(&data, width, height, format))?;
    let device = sam.gpu().name().to_string();
    let packet = sam.predict(&prompts, request.multimask)?;
    let detections: Vec<_> = packet.detections().collect();
    let masks: Vec<_> = packet
        .masks()
        .map(|mask| {
            let r = mask.record;
            let counts = rle_counts(width, height, |x, y| mask.contains(x, y));
            json!({
                "prompt": r.detection,
                "iou_prediction": r.quality,
                "area": mask.area(),
                "crop": [r.x, r.y, r.width, r.height],
                "segmentation": {"size": [height, width], "counts": rle_string(&counts)},
            })
        })
        .collect();
    let result = json!({
        "image": {"path": request.image.display().to_string(), "width": width, "height": height},
        "device": device,
        "prompts": detections.iter().map(|d| json!({"box": d.bbox, "best_iou_prediction": d.mask_quality})).collect::<Vec<_>>(),
        "masks": masks,
    });
    let text = serde_json::to_string_pretty(&result).map_err(|e| Error::Io {
        path: request.out.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    write(request.out, text.as_bytes())?;
    if packet.header().flags & 2 != 0 {
        eprintln!(
            "finesam: warning: masks did not fit the packet's {} bytes of mask data; later masks are empty",
            packet.header().mask_data_capacity
        );
    }
    println!(
        "{} masks for {} prompts on {device} -> {}",
        packet.header().mask_count,
        detections.len(),
        request.out.display()
    );
    if let Some(path) = request.overlay {
        let mut rgb = match format {
            PixelFormat::Gray8 => data.iter().flat_map(|&g| [g, g, g]).collect(),
            _ => data.clone(),
        };
        const COLORS: [[u8; 3]; 6] = [
            [255, 64, 64],
            [64, 200, 64],
            [64, 128, 255],
            [255, 200, 0],
            [200, 64, 255],
            [0, 220, 220],
        ];
        for (i, mask) in packet.masks().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let r = mask.record;
            for y in r.y..r.y + r.height {
                for x in r.x..r.x + r.width {
                    if mask.contains(x, y) {
                        let at = (y as usize * width as usize + x as usize) * 3;
                        for c in 0..3 {
                            rgb[at + c] = ((rgb[at + c] as u16 + color[c] as u16) / 2) as u8;
                        }
                    }
                }
            }
        }
        image::save_buffer(path, &rgb, width, height, image::ExtendedColorType::Rgb8).map_err(
            |e| Error::Image {
                path: path.to_path_buf(),
                message: e.to_string(),
            },
        )?;
    }
    Ok(())
}
