#!/usr/bin/env python3
"""Reference fixtures for the GPU assignment tests (tests/gpu_assign.rs).

Usage:  python3 tests/parity/gen_assign.py OUT_DIR
        (the Rust test reads $FINESAM_FIXTURES/assign, so OUT_DIR is usually that)

Writes float32 cost matrices with scipy.optimize.linear_sum_assignment's optimal totals, and
D-FINE HungarianMatcher inputs with the official matcher's cost matrices and matchings:

  random_small.safetensors, random_medium.safetensors, random_large.safetensors,
  hard.safetensors    tensors m<i>.cost f32 [rows, cols] and m<i>.ref f64 [3] =
                      (optimal total, 1 if integer-valued else 0, rows left unassigned);
                      "unassigned" > 0 only for matrices scipy calls infeasible, whose
                      reference is the maximum-cardinality minimum-cost matching (integer
                      costs, +inf replaced by a cost larger than any finite difference).
  matcher_<name>.safetensors   logits, boxes, labels, target_boxes, offsets, weights, and per
                      image b: b<b>.cost (official C after nan_to_num), b<b>.ref f64 [k]
                      (optimal totals of rounds 0..k-1 with the intended top-k semantics:
                      queries matched in earlier rounds excluded), b<b>.rows / b<b>.cols
                      (the official round-0 indices).

Needs numpy, scipy, safetensors; torch for the official matcher. The matcher source is read
from the d-fine-project wheel in $FINESAM_WHEELS (zoo/dfine/matcher.py and box_ops.py, with
the `register` import stripped); if that fails, a verbatim copy of its math is used and the
output says so. Deterministic (fixed seeds). Total size about 30 MB.
"""

import glob
import inspect
import os
import sys
import types
import zipfile

import numpy as np
from safetensors.numpy import save_file
from scipy.optimize import linear_sum_assignment


def lsa_total(c):
    r, k = linear_sum_assignment(c.astype(np.float64))
    return float(c.astype(np.float64)[r, k].sum())


def max_cardinality_total(c):
    """Integer costs with +inf: maximum-cardinality matching of minimum cost (exact)."""
    c = c.astype(np.float64)
    finite = c[np.isfinite(c)]
    n = min(c.shape)
    if finite.size == 0:
        return 0.0, n
    big = (n + 1) * (finite.max() - finite.min() + 1) + abs(finite.max()) + 1
    r, k = linear_sum_assignment(np.where(np.isinf(c), big, c))
    ok = np.isfinite(c[r, k])
    return float(c[r, k][ok].sum()), int((~ok).sum())


class Writer:
    def __init__(self):
        self.tensors = {}
        self.count = 0

    def add(self, cost, integer):
        cost = np.ascontiguousarray(cost, dtype=np.float32)
        try:
            total, unassigned = lsa_total(cost), 0
        except ValueError:  # scipy: "cost matrix is infeasible"
            assert integer, "infeasible references need integer costs"
            total, unassigned = max_cardinality_total(cost)
        i = self.count
        self.tensors[f"m{i}.cost"] = cost
        self.tensors[f"m{i}.ref"] = np.array([total, float(integer), float(unassigned)])
        self.count += 1

    def save(self, path):
        save_file(self.tensors, path, metadata={"matrices": str(self.count)})
        return self.count


def random_matrix(rng, rows, cols, integer):
    if integer:
        hi = int(rng.choice([2, 10, 100, 1000, 1 << 16, 1 << 24]))
        return rng.integers(0, hi + 1, size=(rows, cols)).astype(np.float32)
    scale = float(rng.choice([1e-3, 1.0, 1e3]))
    return (rng.random((rows, cols)) * scale - 0.3 * scale).astype(np.float32)


def random_sets(out):
    rng = np.random.default_rng(20240601)
    counts = {}
    # 900 small (sides 1..64, every shape class), 110 medium (64..300), 8 large (up to 1000),
    # and 40 square ones of sides 128..384 (the sparse path's range).
    square_rng = np.random.default_rng(20261127)

    def square():
        n = int(square_rng.integers(128, 385))
        return n, n

    plans = [
        ("random_small", 900, lambda: (int(rng.integers(1, 65)), int(rng.integers(1, 65)))),
        ("random_medium", 110, lambda: (int(rng.integers(64, 301)), int(rng.integers(64, 301)))),
        ("random_square", 40, square),
    ]
    for name, n, shape in plans:
        w = Writer()
        for k in range(n):
            rows, cols = shape()
            w.add(random_matrix(rng, rows, cols, integer=k % 2 == 0), integer=k % 2 == 0)
        counts[name] = w.save(os.path.join(out, f"{name}.safetensors"))
    w = Writer()
    for k, (rows, cols) in enumerate([(1000, 1000), (1000, 1000), (1000, 400), (400, 1000),
                                      (1000, 10), (10, 1000), (300, 1000), (1000, 1)]):
        w.add(random_matrix(rng, rows, cols, integer=k % 2 == 1), integer=k % 2 == 1)
    counts["random_large"] = w.save(os.path.join(out, "random_large.safetensors"))
    return counts


def hard_set(out):
    rng = np.random.default_rng(7)
    w = Writer()
    # Ties.
    for shape in [(1, 1), (300, 300), (300, 20), (20, 300), (64, 64)]:
        w.add(np.full(shape, 5.0, np.float32), True)
    w.add((rng.random((200, 200)) < 0.5).astype(np.float32), True)
    w.add(rng.integers(0, 3, size=(150, 300)).astype(np.float32), True)
    # Low rank: outer products (integer) and a rank-2 float cost.
    u, v = rng.integers(1, 100, 300), rng.integers(1, 100, 300)
    w.add(np.outer(u, v).astype(np.float32), True)
    a, b = rng.random((250, 2)), rng.random((2, 250))
    w.add((a @ b).astype(np.float32), False)
    # Sum structure (every complete assignment costs the same).
    w.add((np.arange(100)[:, None] + 3 * np.arange(120)[None, :]).astype(np.float32), True)
    # Large ranges.
    w.add((10.0 ** rng.integers(-20, 21, size=(200, 200)) * rng.random((200, 200))).astype(np.float32), False)
    w.add(rng.integers(0, 1 << 24, size=(300, 300)).astype(np.float32), True)
    w.add(rng.integers(0, 1 << 30, size=(100, 100)).astype(np.float32), False)
    w.add(((rng.random((100, 100)) - 0.5) * 6e38).astype(np.float32), False)
    # Near-degenerate floats: distinct only in the last bits.
    w.add((1.0 + rng.integers(0, 8, size=(200, 200)) * np.float32(2 ** -23)).astype(np.float32), False)
    # Forbidden pairs, feasible and infeasible.
    for shape, density in [((100, 100), 0.3), ((80, 120), 0.6), ((120, 80), 0.6), ((60, 60), 0.97)]:
        c = rng.integers(0, 50, size=shape).astype(np.float32)
        c[rng.random(shape) < density] = np.inf
        w.add(c, True)
    c = rng.integers(0, 9, size=(50, 50)).astype(np.float32)
    c[:3, 1:] = np.inf  # rows 0..2 can only take column 0
    w.add(c, True)
    c = rng.integers(0, 9, size=(40, 30)).astype(np.float32)
    c[:, :5] = np.inf
    c[7] = np.inf
    w.add(c, True)
    # Extreme shapes.
    for shape in [(1, 1000), (1000, 1), (2, 999), (999, 2)]:
        w.add(rng.random(shape).astype(np.float32), False)
    return w.save(os.path.join(out, "hard.safetensors"))


# ------------------------------------------------------------------------------------------
# Official matcher.

FALLBACK_NOTE = None


def load_official():
    """HungarianMatcher from the d-fine-project wheel, `register` stripped."""
    global FALLBACK_NOTE
    import torch  # noqa: F401  (the matcher module imports it)

    wheels = os.environ.get("FINESAM_WHEELS", "")
    candidates = sorted(glob.glob(os.path.join(wheels, "d_fine_project-*.whl"))) if wheels else []
    try:
        if not candidates:
            raise FileNotFoundError(f"no d_fine_project wheel in FINESAM_WHEELS={wheels!r}")
        with zipfile.ZipFile(candidates[0]) as z:
            names = z.namelist()
            matcher_src = z.read(next(n for n in names if n.endswith("zoo/dfine/matcher.py"))).decode()
            box_src = z.read(next(n for n in names if n.endswith("zoo/dfine/box_ops.py"))).decode()
        try:
            import torchvision.ops.boxes  # noqa: F401
            note = "torchvision box_area"
        except Exception:
            # box_ops only needs torchvision's box_area: (x2 - x1) * (y2 - y1).
            tv = types.ModuleType("torchvision")
            ops = types.ModuleType("torchvision.ops")
            boxes = types.ModuleType("torchvision.ops.boxes")
            boxes.box_area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            tv.ops, ops.boxes = ops, boxes
            sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.boxes": boxes})
            note = "torchvision absent: box_area stub (x2-x1)*(y2-y1)"
        box_ops = types.ModuleType("dfine_box_ops")
        exec(compile(box_src, "zoo/dfine/box_ops.py", "exec"), box_ops.__dict__)
        src = matcher_src.replace("from ...core import register", "")
        src = src.replace("@register()", "")
        src = src.replace("from .box_ops import", "from dfine_box_ops import")
        sys.modules["dfine_box_ops"] = box_ops
        mod = types.ModuleType("dfine_matcher")
        exec(compile(src, "zoo/dfine/matcher.py", "exec"), mod.__dict__)
        print(f"official matcher: {candidates[0]} ({note})")
        return mod.HungarianMatcher
    except Exception as e:  # pragma: no cover - only when the wheel is unusable
        FALLBACK_NOTE = f"FALLBACK: verbatim copy of the official math ({e})"
        print(FALLBACK_NOTE)
        return fallback_matcher()


def fallback_matcher():
    import torch
    import torch.nn.functional as F

    def box_cxcywh_to_xyxy(x):
        x_c, y_c, w, h = x.unbind(-1)
        b = [(x_c - 0.5 * w.clamp(min=0.0)), (y_c - 0.5 * h.clamp(min=0.0)),
             (x_c + 0.5 * w.clamp(min=0.0)), (y_c + 0.5 * h.clamp(min=0.0))]
        return torch.stack(b, dim=-1)

    def box_area(b):
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])

    def generalized_box_iou(boxes1, boxes2):
        area1, area2 = box_area(boxes1), box_area(boxes2)
        lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
        rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[:, :, 0] * wh[:, :, 1]
        union = area1[:, None] + area2 - inter
        iou = inter / union
        lt = torch.min(boxes1[:, None, :2], boxes2[:, :2])
        rb = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])
        wh = (rb - lt).clamp(min=0)
        area = wh[:, :, 0] * wh[:, :, 1]
        return iou - (area - union) / area

    class HungarianMatcher:
        def __init__(self, weight_dict, use_focal_loss=False, alpha=0.25, gamma=2.0):
            self.cost_class = weight_dict["cost_class"]
            self.cost_bbox = weight_dict["cost_bbox"]
            self.cost_giou = weight_dict["cost_giou"]
            self.use_focal_loss, self.alpha, self.gamma = use_focal_loss, alpha, gamma

        @torch.no_grad()
        def __call__(self, outputs, targets):
            bs, num_queries = outputs["pred_logits"].shape[:2]
            out_prob = F.sigmoid(outputs["pred_logits"].flatten(0, 1))
            out_bbox = outputs["pred_boxes"].flatten(0, 1)
            tgt_ids = torch.cat([v["labels"] for v in targets])
            tgt_bbox = torch.cat([v["boxes"] for v in targets])
            out_prob = out_prob[:, tgt_ids]
            neg = (1 - self.alpha) * (out_prob**self.gamma) * (-(1 - out_prob + 1e-8).log())
            pos = self.alpha * ((1 - out_prob) ** self.gamma) * (-(out_prob + 1e-8).log())
            cost_class = pos - neg
            cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
            cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
            C = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
            C = C.view(bs, num_queries, -1).cpu()
            sizes = [len(v["boxes"]) for v in targets]
            C = torch.nan_to_num(C, nan=1.0)
            indices = [linear_sum_assignment(c[i]) for i, c in enumerate(C.split(sizes, -1))]
            return {"indices": [(torch.as_tensor(i), torch.as_tensor(j)) for i, j in indices]}

    return HungarianMatcher


def official_cost_matrices(matcher, outputs, targets):
    """The official C (after nan_to_num), captured from inside forward via linear_sum_assignment."""
    captured = []
    # linear_sum_assignment is looked up in the module that defines forward: wrap it there.
    fwd = type(matcher).forward if hasattr(type(matcher), "forward") else type(matcher).__call__
    # forward is wrapped by @torch.no_grad(); the module globals are those of the inner function.
    glb = inspect.unwrap(fwd).__globals__
    original = glb["linear_sum_assignment"]

    def spy(c):
        c = np.asarray(c, dtype=np.float32)
        captured.append(c.copy())
        return original(c)

    glb["linear_sum_assignment"] = spy
    try:
        result = matcher(outputs, targets)
    finally:
        glb["linear_sum_assignment"] = original
    return captured, result["indices"]


def topk_totals(c, k):
    """Intended top-k semantics: queries matched in earlier rounds are excluded."""
    c = c.astype(np.float64).copy()
    totals = []
    for _ in range(k):
        if c.shape[1] == 0:
            totals.append(0.0)
            continue
        r, t = linear_sum_assignment(c)  # fixtures keep queries >= k * targets
        totals.append(float(c[r, t].sum()))
        c[r, :] = np.inf
    return totals


def matcher_sets(out):
    import torch

    Matcher = load_official()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    written = {}
    cases = [
        # name, seed, batch, queries, classes, max targets, weights, k
        ("default", 11, 4, 300, 80, 60, dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0), 3),
        ("weights", 12, 3, 100, 10, 30, dict(cost_class=1.0, cost_bbox=3.0, cost_giou=4.0), 2),
    ]
    for name, seed, bs, nq, ncls, tmax, weights, k in cases:
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(bs, nq, ncls, generator=g) * 3
        cxcy = torch.rand(bs, nq, 2, generator=g)
        wh = torch.rand(bs, nq, 2, generator=g) * 0.5
        wh[:, :2] = 0.0  # degenerate predictions: 0/0 in GIoU -> NaN -> 1.0
        boxes = torch.cat([cxcy, wh], -1)
        counts = [int(c) for c in torch.randint(0, tmax + 1, (bs,), generator=g)]
        counts[0] = 0  # an image without targets
        counts[-1] = tmax
        targets = []
        for t in counts:
            tb = torch.cat([torch.rand(t, 2, generator=g), torch.rand(t, 2, generator=g) * 0.5 + 0.01], -1)
            if t > 1:
                tb[0] = boxes[0, 0]  # identical to a degenerate prediction
                tb[0, 2:] = 0.0
            targets.append({"labels": torch.randint(0, ncls, (t,), generator=g), "boxes": tb})
        matcher = Matcher(weights, use_focal_loss=True, alpha=0.25, gamma=2.0)
        outputs = {"pred_logits": logits.to(dev), "pred_boxes": boxes.to(dev)}
        tg = [{"labels": t["labels"].to(dev), "boxes": t["boxes"].to(dev)} for t in targets]
        costs, indices = official_cost_matrices(matcher, outputs, tg)
        tensors = {
            "logits": logits.numpy().astype(np.float32),
            "boxes": boxes.numpy().astype(np.float32),
            "labels": np.concatenate([t["labels"].numpy() for t in targets]).astype(np.int32)
            if sum(counts) else np.zeros(0, np.int32),
            "target_boxes": np.concatenate([t["boxes"].numpy() for t in targets]).astype(np.float32)
            if sum(counts) else np.zeros((0, 4), np.float32),
            "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int32),
            "weights": np.array([weights["cost_class"], weights["cost_bbox"], weights["cost_giou"], 0.25, 2.0],
                                np.float32),
            "k": np.array([k], np.int32),
        }
        for b, c in enumerate(costs):
            tensors[f"b{b}.cost"] = np.ascontiguousarray(c, np.float32)
            tensors[f"b{b}.ref"] = np.array(topk_totals(c, k), np.float64)
            rows, cols = indices[b]
            tensors[f"b{b}.rows"] = np.asarray(rows, np.int64)
            tensors[f"b{b}.cols"] = np.asarray(cols, np.int64)
            assert abs(tensors[f"b{b}.ref"][0] - float(c.astype(np.float64)[np.asarray(rows), np.asarray(cols)].sum())) < 1e-6 * (1 + abs(tensors[f"b{b}.ref"][0]))
        meta = {"source": FALLBACK_NOTE or "official d-fine-project matcher", "device": dev}
        save_file(tensors, os.path.join(out, f"matcher_{name}.safetensors"), metadata=meta)
        written[name] = (bs, nq, counts)
    return written


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    write_all(sys.argv[1])


def generate(out_dir):
    """Section `assign` of generate.py: writes into OUT_DIR/assign."""
    write_all(os.path.join(str(out_dir), "assign"))


def write_all(out):
    os.makedirs(out, exist_ok=True)
    counts = random_sets(out)
    hard = hard_set(out)
    total = sum(counts.values()) + hard
    print(f"assignment references: {counts} + hard {hard} = {total} matrices")
    if "--no-matcher" not in os.environ.get("FINESAM_GEN_FLAGS", ""):
        print("matcher references:", matcher_sets(out))
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(out, "*.safetensors")))
    print(f"wrote {out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
