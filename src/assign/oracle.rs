//! Exact linear sum assignment in f64: the shortest-augmenting-path algorithm scipy's
//! `linear_sum_assignment` uses (Crouse 2016, a Jonker-Volgenant variant without
//! initialisation heuristics). Independent of the auction; the tests check both the CPU model
//! and the GPU against it. O(n^2 m), so meant for test sizes.

/// An optimal assignment of the smaller side.
#[derive(Debug, Clone, PartialEq)]
pub struct OracleSolution {
    /// Column of each row, -1 when unassigned (only for rows beyond the smaller side).
    pub row_to_col: Vec<i32>,
    /// Minimum total cost.
    pub total: f64,
    /// Rows scanned by the Dijkstra searches (the inner loop count; the GPU's rounds).
    pub row_scans: usize,
}

/// No complete assignment exists (only +inf entries are left for some row or column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Infeasible;

/// Solves `rows x cols` (row-major, +inf = forbidden; NaN/-inf are the caller's problem).
pub fn solve(cost: &[f64], rows: usize, cols: usize) -> Result<OracleSolution, Infeasible> {
    if rows == 0 || cols == 0 {
        return Ok(OracleSolution {
            row_to_col: vec![-1; rows],
            total: 0.0,
            row_scans: 0,
        });
    }
    let transposed = rows > cols;
    let (nr, nc) = if transposed {
        (cols, rows)
    } else {
        (rows, cols)
    };
    let at = |i: usize, j: usize| {
        if transposed {
            cost[j * cols + i]
        } else {
            cost[i * cols + j]
        }
    };
    let mut u = vec![0.0f64; nr];
    let mut v = vec![0.0f64; nc];
    let mut spc = vec![0.0f64; nc];
    let mut path = vec![usize::MAX; nc];
    let mut col4row = vec![usize::MAX; nr];
    let mut row4col = vec![usize::MAX; nc];
    let mut sr = vec![false; nr];
    let mut sc = vec![false; nc];
    let mut remaining = vec![0usize; nc];
    let mut row_scans = 0usize;

    for cur_row in 0..nr {
        // Dijkstra over reduced costs from cur_row to the nearest free column.
        let mut min_val = 0.0f64;
        let mut num_remaining = nc;
        for (it, r) in remaining.iter_mut().enumerate() {
            *r = nc - it - 1;
        }
        sr.fill(false);
        sc.fill(false);
        spc.fill(f64::INFINITY);
        let mut sink = usize::MAX;
        let mut i = cur_row;
        while sink == usize::MAX {
            row_scans += 1;
            let mut index = usize::MAX;
            let mut lowest = f64::INFINITY;
            sr[i] = true;
            for (it, &j) in remaining[..num_remaining].iter().enumerate() {
                let r = min_val + at(i, j) - u[i] - v[j];
                if r < spc[j] {
                    path[j] = i;
                    spc[j] = r;
                }
                if spc[j] < lowest || (spc[j] == lowest && row4col[j] == usize::MAX) {
                    lowest = spc[j];
                    index = it;
                }
            }
            min_val = lowest;
            if min_val == f64::INFINITY || index == usize::MAX {
                return Err(Infeasible);
            }
            let j = remaining[index];
            if row4col[j] == usize::MAX {
                sink = j;
            } else {
                i = row4col[j];
            }
            sc[j] = true;
            num_remaining -= 1;
            remaining[index] = remaining[num_remaining];
        }
        // Dual update, then augment along the path.
        u[cur_row] += min_val;
        for r in 0..nr {
            if sr[r] && r != cur_row {
                u[r] += min_val - spc[col4row[r]];
            }
        }
        for c in 0..nc {
            if sc[c] {
                v[c] -= min_val - spc[c];
            }
        }
        let mut j = sink;
        loop {
            let r = path[j];
            row4col[j] = r;
            let previous = col4row[r];
            col4row[r] = j;
            if r == cur_row {
                break;
            }
            j = previous;
        }
    }

    let mut row_to_col = vec![-1i32; rows];
    let mut total = 0.0;
    for (i, &j) in col4row.iter().enumerate() {
        let (r, c) = if transposed { (j, i) } else { (i, j) };
        row_to_col[r] = c as i32;
        total += cost[r * cols + c];
    }
    Ok(OracleSolution {
        row_to_col,
        total,
        row_scans,
    })
}

/// Maximum-cardinality matching of minimum cost: +inf entries are replaced by a cost larger
/// than any difference a finite assignment can make, so fewer forbidden pairs always win; the
/// forbidden pairs are then reported unassigned. Exact for integer costs whose totals stay
/// below 2^53 (what the tests use).
pub fn solve_max_cardinality(cost: &[f64], rows: usize, cols: usize) -> (OracleSolution, usize) {
    let finite = cost.iter().copied().filter(|c| c.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), c| {
        (lo.min(c), hi.max(c))
    });
    let n = rows.min(cols) as f64;
    let big = if lo.is_finite() {
        (n + 1.0) * (hi - lo + 1.0) + hi.abs() + 1.0
    } else {
        1.0
    };
    let replaced: Vec<f64> = cost
        .iter()
        .map(|&c| if c == f64::INFINITY { big } else { c })
        .collect();
    // Complete after the replacement, so the solver cannot fail.
    let full = solve(&replaced, rows, cols).unwrap_or(OracleSolution {
        row_to_col: vec![-1; rows],
        total: 0.0,
        row_scans: 0,
    });
    let mut row_to_col = full.row_to_col;
    let mut total = 0.0;
    let mut unassigned = 0;
    for (r, c) in row_to_col.iter_mut().enumerate() {
        if *c < 0 {
            continue;
        }
        let value = cost[r * cols + *c as usize];
        if value == f64::INFINITY {
            *c = -1;
            unassigned += 1;
        } else {
            total += value;
        }
    }
    (
        OracleSolution {
            row_to_col,
            total,
            row_scans: full.row_scans,
        },
        unassigned,
    )
}
