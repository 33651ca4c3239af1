//! Shared checks of the assignment tests (CPU model and GPU solver against scipy fixtures).

use finesam::assign::fixtures::FixtureMatrix;
use finesam::assign::Assignment;

/// Checks a solved fixture matrix against scipy's optimum: integer costs exactly, float costs
/// within the reported bound (plus f64 summation noise).
pub fn check_against_scipy(a: &Assignment, m: &FixtureMatrix) {
    assert_eq!(a.unassigned, m.unassigned, "{}: cardinality", m.name);
    if m.integer && a.quantum == 0.0 {
        assert_eq!(a.total_cost, m.total, "{}: integer total", m.name);
    } else {
        let noise = 1e-12
            * m.cost
                .iter()
                .filter(|c| c.is_finite())
                .map(|c| c.abs() as f64)
                .sum::<f64>();
        let diff = a.total_cost - m.total;
        assert!(
            diff <= a.gap_bound() * (1.0 + 1e-9) + noise && -diff <= noise,
            "{}: total {} vs scipy {} (bound {})",
            m.name,
            a.total_cost,
            m.total,
            a.gap_bound()
        );
    }
}
