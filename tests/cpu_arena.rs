//! The arena planner: tensors alive at the same time never share bytes, and the planner
//! actually reuses memory across disjoint lifetimes.

mod common;

use common::Rng;
use finesam::gpu::arena::{ArenaPlanner, ARENA_ALIGNMENT};

#[test]
fn overlapping_lifetimes_never_share_bytes() {
    let mut rng = Rng::new(7);
    for _ in 0..200 {
        let mut planner = ArenaPlanner::new();
        let count = rng.range(1, 40) as usize;
        for i in 0..count {
            let first = rng.range(0, 30) as usize;
            let last = first + rng.range(0, 10) as usize;
            let bytes = rng.range(0, 1 << 20) as usize;
            planner
                .request(format!("t{i}"), bytes, first, last)
                .unwrap();
        }
        let plan = planner.plan();
        let entries: Vec<_> = plan.entries().collect();
        for (a, &(_, oa, ba, fa, la)) in entries.iter().enumerate() {
            assert_eq!(oa % ARENA_ALIGNMENT, 0, "misaligned offset");
            assert!(oa + ba <= plan.peak_bytes());
            for &(_, ob, bb, fb, lb) in &entries[a + 1..] {
                let live_together = fa <= lb && fb <= la;
                let bytes_overlap = oa < ob + bb.max(1) && ob < oa + ba.max(1);
                assert!(!(live_together && bytes_overlap), "overlap in {entries:?}");
            }
        }
        assert!(plan.peak_bytes() <= plan.unshared_bytes());
    }
}

#[test]
fn disjoint_lifetimes_share_memory() {
    let mut planner = ArenaPlanner::new();
    // A chain: each tensor lives two steps, so at most two are alive at once.
    for step in 0..10 {
        planner
            .request(format!("t{step}"), 1 << 20, step, step + 1)
            .unwrap();
    }
    let plan = planner.plan();
    assert_eq!(plan.peak_bytes(), 2 << 20);
    assert_eq!(plan.unshared_bytes(), 10 << 20);
}

#[test]
fn inverted_lifetime_is_an_error() {
    let mut planner = ArenaPlanner::new();
    let err = planner.request("backwards", 16, 5, 2).unwrap_err();
    assert!(err.to_string().contains("backwards"), "{err}");
}
