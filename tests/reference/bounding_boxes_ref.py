"""Float64 references for pynn.utils.bounding_boxes: one box (or one pair) at a time, each
format written out as the corners it names."""

import math

import numpy as np

EPSILON = 1e-7


def _corners(box, fmt, h, w):
    """(x1, y1, x2, y2) of one box."""
    a, b, c, d = (float(v) for v in box)
    rel = fmt.startswith("rel_")
    base = fmt[4:] if rel else fmt
    if base == "xyxy":
        x1, y1, x2, y2 = a, b, c, d
    elif base == "yxyx":
        y1, x1, y2, x2 = a, b, c, d
    elif base == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    elif base == "center_xywh":
        x1, y1, x2, y2 = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    else:  # center_yxhw
        x1, y1, x2, y2 = b - d / 2, a - c / 2, b + d / 2, a + c / 2
    if rel:
        x1, x2, y1, y2 = x1 * w, x2 * w, y1 * h, y2 * h
    return x1, y1, x2, y2


def _written(corners, fmt, h, w):
    x1, y1, x2, y2 = corners
    rel = fmt.startswith("rel_")
    if rel:
        x1, x2, y1, y2 = x1 / w, x2 / w, y1 / h, y2 / h
    base = fmt[4:] if rel else fmt
    return {"xyxy": (x1, y1, x2, y2), "yxyx": (y1, x1, y2, x2),
            "xywh": (x1, y1, x2 - x1, y2 - y1),
            "center_xywh": ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1),
            "center_yxhw": ((y1 + y2) / 2, (x1 + x2) / 2, y2 - y1, x2 - x1)}[base]


def convert_format(boxes, source, target, height=None, width=None):
    boxes = np.asarray(boxes, np.float64)
    out = np.empty_like(boxes)
    for i in np.ndindex(boxes.shape[:-1]):
        out[i] = _written(_corners(boxes[i], source, height, width), target, height, width)
    return out


def clip_to_image_size(boxes, labels, height, width):
    """xyxy boxes clipped to [0, width] x [0, height]; an empty one's label -1."""
    boxes = np.asarray(boxes, np.float64).copy()
    labels = np.asarray(labels).copy()
    for i in np.ndindex(boxes.shape[:-1]):
        x1, y1, x2, y2 = boxes[i]
        boxes[i] = (min(max(x1, 0), width), min(max(y1, 0), height), min(max(x2, 0), width),
                    min(max(y2, 0), height))
        if (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1]) <= 0:
            labels[i] = -1
    return boxes, labels


def iou(box1, box2):
    """Two xyxy boxes' intersection over (union + epsilon)."""
    iw = max(0.0, min(box1[2], box2[2]) - max(box1[0], box2[0]))
    ih = max(0.0, min(box1[3], box2[3]) - max(box1[1], box2[1]))
    inter = iw * ih
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    return inter / (area(box1) + area(box2) - inter + EPSILON)


def compute_iou(boxes1, boxes2, fmt, h=None, w=None, use_masking=False, mask_val=-1):
    b1 = convert_format(boxes1, fmt, "xyxy", h, w)
    b2 = convert_format(boxes2, fmt, "xyxy", h, w)
    batched = b1.ndim == 3
    if not batched:
        b1, b2 = b1[None], b2[None]
    out = np.empty((b1.shape[0], b1.shape[1], b2.shape[1]))
    for b in range(b1.shape[0]):
        for i in range(b1.shape[1]):
            for j in range(b2.shape[1]):
                out[b, i, j] = iou(b1[b, i], b2[b, j])
                # Keras masks on the yxyx coordinates all being negative
                if use_masking and (max(b1[b, i]) < 0 or max(b2[b, j]) < 0):
                    out[b, i, j] = mask_val
    return out if batched else out[0]


def ciou(box1, box2):
    """Complete IoU of two xyxy boxes (Keras's epsilons on the heights and the union)."""
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1] + EPSILON
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1] + EPSILON
    iw = max(0.0, min(box1[2], box2[2]) - max(box1[0], box2[0]))
    ih = max(0.0, min(box1[3], box2[3]) - max(box1[1], box2[1]))
    inter = iw * ih
    union = w1 * h1 + w2 * h2 - inter + EPSILON
    overlap = inter / (union + EPSILON)
    cw = max(box1[2], box2[2]) - min(box1[0], box2[0])
    ch = max(box1[3], box2[3]) - min(box1[1], box2[1])
    rho2 = ((box1[0] + box1[2]) / 2 - (box2[0] + box2[2]) / 2) ** 2 \
        + ((box1[1] + box1[3]) / 2 - (box2[1] + box2[3]) / 2) ** 2
    v = 4 / math.pi ** 2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    alpha = v / (v - overlap + 1 + EPSILON)
    return overlap - (rho2 / (cw ** 2 + ch ** 2 + EPSILON) + v * alpha)


def affine_no_shear(boxes, angle, tx, ty, scale, height, width):
    """Keras's box affine without shear, as geometry: each corner p goes to
    s * R(-angle) (p - c + t) + c, c the pixel centre ((w-1)/2, (h-1)/2) and t the
    translation fractions times (w-1, h-1); the box is the one around the four corners."""
    boxes = np.asarray(boxes, np.float64)
    out = np.empty_like(boxes)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    for b in range(boxes.shape[0]):
        th = math.radians(angle[b])
        for n in range(boxes.shape[1]):
            x1, y1, x2, y2 = boxes[b, n]
            pts = []
            for x, y in ((x1, y1), (x2, y1), (x2, y2), (x1, y2)):
                u, v = x - cx + tx[b] * (width - 1), y - cy + ty[b] * (height - 1)
                pts.append((scale[b] * (math.cos(th) * u + math.sin(th) * v) + cx,
                            scale[b] * (-math.sin(th) * u + math.cos(th) * v) + cy))
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            out[b, n] = (min(xs), min(ys), max(xs), max(ys))
    return out


def encode(anchors, boxes, fmt):
    """center_yxhw deltas of xyxy boxes against xyxy anchors, one at a time."""
    boxes = np.asarray(boxes, np.float64)
    out = np.empty_like(boxes)
    for i in np.ndindex(boxes.shape[:-1]):
        a = _written(_corners(anchors[i[-1]], fmt, None, None), "center_yxhw", None, None)
        b = _written(_corners(boxes[i], fmt, None, None), "center_yxhw", None, None)
        ah, aw = max(a[2], EPSILON), max(a[3], EPSILON)
        out[i] = ((b[0] - a[0]) / ah, (b[1] - a[1]) / aw, math.log(max(b[2], EPSILON) / ah),
                  math.log(max(b[3], EPSILON) / aw))
    return out
