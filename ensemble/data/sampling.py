"""Bilinear sampling taps shared by the NumPy image warps (TTA views, deskewing)."""

from __future__ import annotations

import numpy as np


def bilinear_taps(rows: np.ndarray, cols: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The four neighbours of each sample position (row, col), any shape S, in an image of the given size.

    Returns ``(idx, wts)``, both of shape ``(4, *S)``: flat pixel indices ``row * width + col`` and
    their bilinear weights; a neighbour outside the image gets index 0 and weight 0 (zero fill).
    The sample is ``sum_k image.flat[idx[k]] * wts[k]``.
    """
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = rows - r0, cols - c0
    idx, wts = [], []
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
        idx.append(np.where(inside, rr * width + cc, 0).astype(np.intp))
        wts.append(np.where(inside, w, 0))
    return np.stack(idx), np.stack(wts)
