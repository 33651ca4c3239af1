//! COCO RLE against strings produced by pycocotools 2.0 (`mask.encode` on Fortran-ordered
//! uint8 arrays) for the same masks.

use finesam::coco::{rle_counts, rle_string};

fn encode(rows: usize, cols: usize, set: impl Fn(usize, usize) -> bool) -> String {
    rle_string(&rle_counts(cols as u32, rows as u32, |x, y| {
        set(y as usize, x as usize)
    }))
}

#[test]
fn small_masks_match_pycocotools() {
    // a = zeros((7, 9)); a[2:5, 3:8] = 1; a[6, 0] = 1; a[0, 8] = 1
    let a = |r: usize, c: usize| {
        ((2..5).contains(&r) && (3..8).contains(&c)) || (r, c) == (6, 0) || (r, c) == (0, 8)
    };
    assert_eq!(encode(7, 9, a), "61`02D0000000NN4");
    assert_eq!(encode(300, 200, |_, _| true), "0Pcj1");
    assert_eq!(encode(3, 4, |_, _| false), "<");
}

#[test]
fn random_mask_matches_pycocotools() {
    // A 40x33 random mask (numpy default_rng(3).random((40, 33)) > 0.5), rows packed LSB first.
    let hex = "0ce9262b6b6f51e5f583b8f5614af01f1a29c1dc3a4a9af3df793a91a5bad99e18d5ede24e9f06aa9c223ccc64a397c8fc79908c2e04627db8252774714b1dc3d95212f2a5ef25beea01187604081ac5e28a0da8336e5ec29f8c513f55829d6eb5d0790696ff519c3e48808b613b0b0495e6b683e3d504f74dfd85b7e95ea1981ae8859c87ba9dd77cf03c799d67bf516865b49a5799d8962719c31a67fb386c96d56ff857";
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let bit = |i: usize| bytes[i / 8] >> (i % 8) & 1 == 1;
    let expected = "12141K40L13OL1045KL00004OL120OO132NOON0O200304NI000140N030KO111ON0020O00001OO42N1NN0O01021O00O0000O015NM1O00O30L91G01O20N100OO0000100012NO2OO0O0070I14OM203ON0O0N0010O11OO020N021OO1010M41LO50K030M110O01O40M1OO00O0000123NL0101030K0011OO20O0O60N001LO32O1NN011NO41L03OM031MO22NO0O0213OL2200011LN0O10O01010O6OJ2030K0222NL0020N13OM010O030O0N010O0020N10O50K30M10O0016OO2ONL213OL0O003000M50K000022NN00030N021MO062KNO00120OO12N10M00111ON01110NO21NO241LM00021N060J01O01OO122N00M11O21M1130L0O20M0100002ON00001100OO01010O0O20O0O032O1NM0122OMO0112ON0O3030J00013ON110O5OK200O50K0O0O20N31NO023NL020N020N12ON2000N30N0O0011OO10021N11M20M0020O1OO21O010NO010O1120M00O40M";
    assert_eq!(encode(40, 33, |r, c| bit(r * 33 + c)), expected);
}
