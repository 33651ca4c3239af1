#!/usr/bin/env python3
"""CPU study behind docs/ASSIGN.md, "Sparse candidates: the plan for 300x300" (needs numpy, scipy).

    python3 scripts/study-assign.py [N] [SEEDS]        # default 300 3

For seeded uniform [0, 1) N x N f32 costs it prints:
  1. where the optimum lies: the largest rank of an assigned entry within its row (0 = the row's
     smallest entry);
  2. dependent steps of two sequential solvers: LAPJV (column reduction, reduction transfer, two
     augmenting-row-reduction passes, then shortest augmenting paths; each step is a full row
     scan) -- scipy's own solver needs ~4000 row scans at 300x300 (src/assign/oracle.rs counts);
  3. the epsilon-scaling auction of src/assign/cpu.rs (quantised to 2^24 levels, theta 8, Jacobi
     rounds, the same epsilon schedule) on the dense matrix and restricted to each row's k
     cheapest entries, with the exact check that makes the sparse result optimal for the full
     matrix: no arc outside the candidates violates epsilon-complementary slackness (eps = 1).
The auction here resolves ties like the kernel only approximately, so its round counts are
comparable to the CPU model's in size, not equal.
"""
import sys

import numpy as np
from scipy.optimize import linear_sum_assignment


def lapjv_steps(c):
    """Sequential row scans of LAPJV (dense, as in Jonker & Volgenant 1987)."""
    n = c.shape[0]
    x = -np.ones(n, int)
    y = c.argmin(axis=0)
    v = c.min(axis=0).astype(float)
    unique = np.ones(n, bool)
    for j in range(n - 1, -1, -1):
        i = y[j]
        if x[i] < 0:
            x[i] = j
        else:
            unique[i] = False
            y[j] = -1
    free = []
    for i in range(n):
        if x[i] < 0:
            free.append(i)
        elif unique[i]:
            red = c[i] - v
            red[x[i]] = np.inf
            v[x[i]] -= red.min()
    arr = 0
    for _ in range(2):  # augmenting row reduction
        fr, cur, new, rr = list(free), 0, 0, 0
        while cur < len(fr):
            rr += 1
            arr += 1
            i = fr[cur]
            cur += 1
            red = c[i] - v
            j1 = int(np.argmin(red))
            u1 = red[j1]
            red[j1] = np.inf
            j2 = int(np.argmin(red))
            u2 = red[j2]
            i0 = y[j1]
            lowers = u1 < u2
            if rr < cur * n:
                if lowers:
                    v[j1] -= u2 - u1
                elif i0 >= 0:
                    j1, i0 = j2, y[j2]
                if i0 >= 0:
                    if lowers:
                        cur -= 1
                        fr[cur] = i0
                    else:
                        fr[new] = i0
                        new += 1
            elif i0 >= 0:
                fr[new] = i0
                new += 1
            x[i], y[j1] = j1, i
        free = fr[:new]
    scans = 0
    for f in free:  # shortest augmenting paths (Dijkstra), one row scan per scanned column
        d, pred, done = c[f] - v, np.full(n, f), np.zeros(n, bool)
        while True:
            mind = d[~done].min()
            ready = np.where(~done & (d == mind))[0]
            ends = [j for j in ready if y[j] < 0]
            if ends:
                end = ends[0]
                break
            j = ready[0]
            done[j] = True
            i = y[j]
            scans += 1
            nd = mind + (c[i] - v) - (c[i, j] - v[j])
            better = ~done & (nd < d)
            d[better], pred[better] = nd[better], i
        v[done] += d[done] - mind
        j = end
        while True:
            i = pred[j]
            y[j] = i
            x[i], j = j, x[i]
            if i == f:
                break
    return arr, scans, x


def auction(q, levels, theta=8, k=None):
    """Rounds of the epsilon-scaling auction; k: bid over each row's k cheapest entries only."""
    n, m = q.shape
    mult = n + 1
    a = -(mult * q.astype(np.int64))
    cand = np.argsort(q, axis=1, kind="stable")[:, :k] if k else np.tile(np.arange(m), (n, 1))
    ac = np.take_along_axis(a, cand, axis=1)
    price = np.zeros(m, np.int64)
    owner = -np.ones(m, int)
    obj = -np.ones(n, int)
    eps = max(1, mult * levels // theta)
    rounds = singles = 0
    while True:
        price -= price.min()
        best = (ac - price[cand]).max(axis=1)
        for i in np.where(obj >= 0)[0]:
            if a[i, obj[i]] - price[obj[i]] < best[i] - eps:  # no longer eps-optimal
                owner[obj[i]] = -1
                obj[i] = -1
        forward = 0
        while True:
            free = np.where(obj < 0)[0]
            if len(free) == 0:
                break
            rounds += 1
            forward += 1
            singles += len(free) == 1
            vals = ac[free] - price[cand[free]]
            top = np.argsort(-vals, axis=1, kind="stable")[:, :2]
            v1 = np.take_along_axis(vals, top[:, :1], 1)[:, 0]
            v2 = np.take_along_axis(vals, top[:, 1:], 1)[:, 0]
            j1 = np.take_along_axis(cand[free], top[:, :1], 1)[:, 0]
            inc = v1 - v2 + eps
            taken = set()
            for b in np.lexsort((free, -inc)):  # the highest bid on each object wins
                j = j1[b]
                if j in taken:
                    continue
                taken.add(j)
                price[j] += inc[b]
                if owner[j] >= 0:
                    obj[owner[j]] = -1
                owner[j], obj[free[b]] = free[b], j
        if eps == 1:
            break
        eps = max(1, eps // (theta * theta if forward <= 2 else theta))
    profit = a[np.arange(n), obj] - price[obj]
    violations = int(((a - price[None, :]) > profit[:, None] + 1).sum())
    return obj, rounds, singles, violations


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    seeds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    levels = 1 << 24
    for seed in range(seeds):
        c = np.random.RandomState(seed).rand(n, n).astype(np.float32)
        r, cc = linear_sum_assignment(c)
        rank = int((c[r] < c[r, cc][:, None]).sum(axis=1).max())
        arr, scans, x = lapjv_steps(c.astype(np.float64))
        ok = abs(c[np.arange(n), x].sum() - c[r, cc].sum()) < 1e-4
        print(f"{n}x{n} seed {seed}: optimum within each row's {rank + 1} cheapest entries; "
              f"LAPJV {arr} row-reduction steps + {scans} path scans (optimal {ok})")
        span = float(c.max()) - float(c.min())
        q = np.rint((c.astype(np.float64) - float(c.min())) * (levels / span)).astype(np.int64)
        r, cc = linear_sum_assignment(q)
        best = q[r, cc].sum()
        for k in (None, 32, 16):
            obj, rounds, singles, viol = auction(q, levels, k=k)
            total = q[np.arange(n), obj].sum()
            print(f"  auction {'dense' if k is None else f'k={k}':>5}: {rounds} rounds "
                  f"({singles} single-bidder), optimal {total == best}, "
                  f"arcs violating eps-CS {viol}")


if __name__ == "__main__":
    main()
