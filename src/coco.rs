//! COCO run-length encoding of binary masks, as `pycocotools.mask.encode` writes it: runs over
//! the mask in column-major order, starting with a (possibly empty) run of zeros, and the
//! compressed string form (`counts` as 6-bit characters, each count but the first two stored
//! as the difference to the count two places before).

/// Column-major run lengths of a `width x height` mask given by `is_set(x, y)`.
pub fn rle_counts(width: u32, height: u32, is_set: impl Fn(u32, u32) -> bool) -> Vec<u32> {
    let mut counts = Vec::new();
    let (mut current, mut run) = (false, 0u32);
    for x in 0..width {
        for y in 0..height {
            let value = is_set(x, y);
            if value != current {
                counts.push(run);
                current = value;
                run = 0;
            }
            run += 1;
        }
    }
    counts.push(run);
    counts
}

/// pycocotools' compressed string of run lengths (`rleToString`).
pub fn rle_string(counts: &[u32]) -> String {
    let mut out = String::new();
    for (i, &count) in counts.iter().enumerate() {
        let mut x = count as i64;
        if i > 2 {
            x -= counts[i - 2] as i64;
        }
        loop {
            let mut c = (x & 0x1f) as u8;
            x >>= 5;
            let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                c |= 0x20;
            }
            out.push((c + 48) as char);
            if !more {
                break;
            }
        }
    }
    out
}
