//! GPU tests of the core: the weights region (fp16 upload in one allocation and one copy), the
//! arena on the device, and graph capture failing cleanly. Skipped without a GPU.

mod common;

use common::gpu_available;
use common::weights::{mobilesam, temp_dir, write};
use finesam::gpu::{Arena, ArenaPlanner, Graph};
use finesam::weights::{DeviceWeights, WeightsFile};
use finesam::{Error, Gpu};
use half::f16;
use safetensors::Dtype;

#[test]
fn weights_upload_as_fp16_into_one_region() {
    if !gpu_available("weights_upload_as_fp16_into_one_region") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let dir = temp_dir("gpu-weights");
    let mut specs = mobilesam();
    specs[0].dtype = Dtype::F16;
    specs[1].dtype = Dtype::BF16;
    let file = WeightsFile::open(write(&dir, "sam.safetensors", &specs)).unwrap();
    let before = gpu.counters();
    let weights = DeviceWeights::upload(&gpu, &file, &[]).unwrap();
    let cost = gpu.counters().since(&before);
    assert_eq!((cost.device_allocations, cost.uploads), (1, 1), "{cost:?}");
    for spec in &specs {
        let tensor = weights.get(&spec.name).expect("uploaded");
        assert_eq!(tensor.shape, spec.shape);
        assert_eq!(tensor.ptr % 256, 0, "{} misaligned", spec.name);
        let expected = file.to_f16(&spec.name).unwrap();
        let mut got = vec![f16::ZERO; expected.len()];
        gpu.download(bytemuck::cast_slice_mut(&mut got), tensor.ptr)
            .unwrap();
        gpu.synchronize().unwrap();
        assert!(
            got.iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{} differs on the device",
            spec.name
        );
    }
    assert!(weights.get("not.a.tensor").is_none());
}

#[test]
fn arena_tensors_alive_together_do_not_overlap_on_device() {
    if !gpu_available("arena_tensors_alive_together_do_not_overlap_on_device") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut planner = ArenaPlanner::new();
    let ids: Vec<_> = (0..6)
        .map(|i| {
            planner
                .request(format!("t{i}"), 1000 + 777 * i, 0, 1)
                .unwrap()
        })
        .collect();
    let arena = Arena::allocate(&gpu, planner.plan()).unwrap();
    for (i, &id) in ids.iter().enumerate() {
        gpu.memset(arena.ptr(id), i as u8 + 1, arena.bytes(id))
            .unwrap();
    }
    for (i, &id) in ids.iter().enumerate() {
        let mut bytes = vec![0u8; arena.bytes(id)];
        gpu.download(&mut bytes, arena.ptr(id)).unwrap();
        gpu.synchronize().unwrap();
        assert!(
            bytes.iter().all(|&b| b == i as u8 + 1),
            "tensor {i} was overwritten"
        );
    }
}

#[test]
fn failed_capture_leaves_the_stream_usable() {
    if !gpu_available("failed_capture_leaves_the_stream_usable") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let buffer = gpu.alloc(4096).unwrap();
    let result = Graph::capture(&gpu, || Err(Error::Plan("stage failed on purpose".into())));
    assert!(matches!(result, Err(Error::Plan(_))));
    // An empty capture is a valid graph that does nothing.
    Graph::capture(&gpu, || Ok(())).unwrap().replay().unwrap();
    gpu.memset(buffer.ptr(), 3, 4096).unwrap();
    let mut back = vec![0u8; 4096];
    gpu.download(&mut back, buffer.ptr()).unwrap();
    gpu.synchronize().unwrap();
    assert!(back.iter().all(|&b| b == 3));
}
