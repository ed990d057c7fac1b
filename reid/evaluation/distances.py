"""Query x gallery distances from features, any rows at a time, bit-identical whatever the block.

Distances from features (:class:`FeatureDistances`) do not depend on the blocks they are computed in:
every matrix product has both operands' row counts padded to a multiple of :data:`GEMM_ROWS` and
multiplies the gallery in chunks of a fixed size (:func:`gallery_chunk_rows`), and per-row norms are
computed once. A BLAS library computes a 1-row product (GEMV) or a ragged tail with other kernels whose
float32 sums round differently, so otherwise two identical gallery images could get different
distances and exact ties, hence the metrics, would depend on the memory budget.

Distances are float32 (as torchreid's and fast-reid's Cython evaluators compare them): float64 input
is rounded to float32 first, float16/bfloat16 input is widened exactly.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence, Union

import numpy as np
import torch

from reid.evaluation.protocol import ArrayLike, check_metric, feature_tensors
from reid.utils.errors import ReIDError

#: Query rows for :meth:`FeatureDistances.rows`: a range, or indices (sequence, numpy or torch).
QueryRows = Union[slice, Sequence[int], np.ndarray, torch.Tensor]

#: Both operands of every matrix product have a multiple of this many rows (zero rows are appended and
#: their results dropped). MKL, like other BLAS libraries, computes a 1-row product as a GEMV and ragged
#: row or column tails with other kernels, whose sums round differently; with both row counts a multiple
#: of 16 each entry is computed the same way whatever block it is in (checked with MKL on AVX-512 over
#: hundreds of random problems, 11- to 2048-d, galleries up to 16k, blocks of 16 to 1,024 rows; on CUDA
#: the tests marked cuda check it).
GEMM_ROWS = 16
#: At most this many query rows per product, so the full query x gallery matrix is never materialised
#: when there are more queries; on CPU, 1,024-row products run as fast per entry as larger ones (measured).
MAX_BLOCK_ROWS = 1024
# The gallery is multiplied in chunks of a fixed number of rows (this many bytes of float32 features),
# never derived from the budget, so that the products' shapes do not depend on it. A chunk that must
# change dtype or device, and the zero-padded last chunk, are copied into a buffer of at most this size.
_GALLERY_CHUNK_BYTES = 32 * 2**20
# ... and at most this many rows, so that a block of distances to one chunk stays small for narrow
# features too (it bounds the working set of the gallery-chunked ranking,
# see reid.evaluation.ranking.rank_gallery_chunks).
_MAX_GALLERY_CHUNK_ROWS = 16384


def padded(num_rows: int) -> int:
    """``num_rows`` rounded up to a multiple of :data:`GEMM_ROWS` (at least one granule)."""
    return max(1, -(-num_rows // GEMM_ROWS)) * GEMM_ROWS


def gallery_chunk_rows(dim: int) -> int:
    """Gallery rows per matrix product: a fixed multiple of 16 (it depends only on the width)."""
    rows = min(_GALLERY_CHUNK_BYTES // (4 * max(dim, 1)), _MAX_GALLERY_CHUNK_ROWS)
    return max(GEMM_ROWS, rows // GEMM_ROWS * GEMM_ROWS)


class FeatureDistances:
    """The float32 query x gallery distances that :func:`reid.evaluation.rank.evaluate_features` ranks,
    any rows at a time.

    ``distance = offset[g] + coef[g] * (q' . g)`` with ``q'`` the query scaled to unit length when the
    features are normalised: cosine ``1 - s_g (q' . g)``; euclidean ``sqrt(max(0, |q'|^2 + |g'|^2 -
    2 s_g (q' . g)))`` (``s_g`` = 1 / |g| when normalised, else 1). Per-row norms are computed once, in
    fixed chunks; every matrix product pads both operands to a multiple of 16 rows and multiplies the
    gallery in fixed chunks. So a distance does not depend on which other rows are computed with it:
    blocks of any size, :func:`compute_distance_matrix` and :meth:`rows` of any queries agree bit for
    bit, ties included.

    Args:
        qf, gf: query and gallery features (numpy or torch, float16/bfloat16/float32/float64).
        metric: ``"cosine"`` or ``"euclidean"``.
        normalize: L2-normalise the features first (cosine always does).
        device: where to compute; default ``qf``'s device when it is a tensor, else ``gf``'s.
    """

    def __init__(self, qf: ArrayLike, gf: ArrayLike, metric: str = "cosine", normalize: bool = False,
                 device: torch.device | str | None = None):
        self.metric = check_metric(metric)
        self.query, self.gallery, default_device = feature_tensors(qf, gf)
        self.device = torch.device(device) if device is not None else default_device
        self.unit_norm = bool(normalize) or metric == "cosine"
        num_g, dim = self.gallery.shape
        self.chunk_rows = gallery_chunk_rows(dim)
        self.query_scale, self.query_sq_norm = self._scales(self.query)
        scale, sq_norm = self._scales(self.gallery)
        # distance = offset + coef * (q' . g): cosine 1 - s_g q'.g; squared euclidean |g'|^2 - 2 s_g q'.g
        # (+ |q'|^2 added per query row).
        self.coef = -scale if self.metric == "cosine" else -2.0 * scale
        self.offset = torch.ones_like(scale) if self.metric == "cosine" else sq_norm
        # The per-row vectors alive here, at their peak: the query's two, the gallery's scale and squared
        # norm and the coef and offset made from them (for euclidean the offset is the squared norm
        # itself, counted twice: 4 bytes per gallery image more than is used).
        self._norm_bytes = sum(t.nbytes for t in (self.query_scale, self.query_sq_norm, scale, sq_norm, self.coef,
                                                  self.offset))
        # A float32 contiguous gallery on the device is multiplied in place, chunk by chunk, except the
        # last chunk when it must be padded: that one is copied once. Any other gallery is converted
        # chunk by chunk into a reused buffer.
        self.in_place = (self.gallery.dtype == torch.float32 and self.gallery.device == self.device
                         and self.gallery.is_contiguous())
        last_start = (max(num_g - 1, 0) // self.chunk_rows) * self.chunk_rows
        self.last_width = num_g - last_start
        self._tail: torch.Tensor | None = None
        if self.in_place and self.last_width % GEMM_ROWS:
            self._tail = self._padded_rows(self.gallery[last_start:])

    @property
    def shape(self) -> tuple[int, int]:
        """(number of queries, number of gallery images)."""
        return self.query.shape[0], self.gallery.shape[0]

    @property
    def fixed_bytes(self) -> int:
        """Bytes held for the whole computation: per-row norms, scales and offsets, and the gallery chunk
        buffer (the padded last chunk of an in-place gallery, or the conversion buffer of
        :meth:`_gallery_chunks`)."""
        if self.in_place:
            buffer_bytes = 0 if self._tail is None else self._tail.nbytes
        else:
            rows, dim = self._conversion_buffer_shape()
            buffer_bytes = 4 * rows * dim
        return self._norm_bytes + buffer_bytes

    @property
    def query_row_bytes(self) -> int:
        """Bytes per query row of the float32 query copy made by :meth:`_query_rows`."""
        return 4 * self.query.shape[1]

    @property
    def block_row_bytes(self) -> int:
        """Bytes per query row of a :meth:`block`: its float32 row of ``out`` (:meth:`block_buffer`), its
        float32 query copy (:meth:`_query_rows`) and, when the last gallery chunk is padded, its row of the
        float32 product with that chunk (:meth:`_chunk_distances`)."""
        padded_last = padded(self.last_width)
        tail = 4 * padded_last if padded_last != self.last_width else 0
        return 4 * self.gallery.shape[0] + self.query_row_bytes + tail

    def block_buffer(self, num_rows: int) -> torch.Tensor:
        """An uninitialised float32 ``out`` for :meth:`block` of ``num_rows`` rows (a multiple of 16 for
        blocks of that many queries)."""
        return torch.empty((num_rows, self.gallery.shape[0]), device=self.device)

    def block(self, rows: QueryRows, out: torch.Tensor) -> torch.Tensor:
        """Distances of the query ``rows`` to every gallery image, written into ``out``.

        ``out``: float32 on :attr:`device`, ``num_gallery`` columns and at least as many rows as the
        queries rounded up to a multiple of 16 (the padding rows are scratch). Returns ``out``'s first
        ``len(rows)`` rows. Memory besides ``out``: :attr:`block_row_bytes` per row less ``out``'s.
        """
        query, sq_norm = self._query_rows(rows)
        for start, chunk in self._gallery_chunks():
            end = min(start + self.chunk_rows, self.gallery.shape[0])
            self._chunk_distances(query, sq_norm, start, chunk, out[:query.shape[0], start:end])
        return out[:sq_norm.shape[0]]

    def column_chunks(self, rows: QueryRows, buffer: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first gallery index, distances)`` of the query ``rows`` to each fixed gallery chunk in turn.

        The same numbers as :meth:`block`, bit for bit, a chunk at a time: ``buffer`` (float32 on
        :attr:`device`, at least ``len(rows)`` rounded up to 16 rows and ``min(chunk_rows, num_gallery)``
        columns) is overwritten by each chunk, so a yielded view is valid until the next one. Memory
        besides ``buffer``: :attr:`query_row_bytes` per row, and the product with the padded last chunk
        (at most a chunk's width per row, while that chunk is computed).
        """
        query, sq_norm = self._query_rows(rows)
        for start, chunk in self._gallery_chunks():
            width = min(self.chunk_rows, self.gallery.shape[0] - start)
            yield start, self._chunk_distances(query, sq_norm, start, chunk, buffer[:query.shape[0], :width])

    def rows(self, rows: QueryRows) -> torch.Tensor:
        """A new ``len(rows) x num_gallery`` float32 tensor: the distances of the query ``rows``."""
        num = self.query_scale[_on(rows, self.device)].shape[0]
        return self.block(rows, self.block_buffer(padded(num)))

    def matrix(self) -> torch.Tensor:
        """The full ``num_query x num_gallery`` distance matrix."""
        out = torch.empty(self.shape, device=self.device)
        return fill_rows(out, lambda start, end, block: self.block(slice(start, end), block), MAX_BLOCK_ROWS)

    def _query_rows(self, rows: QueryRows) -> tuple[torch.Tensor, torch.Tensor]:
        """The zero-padded (scaled) float32 query rows (:attr:`query_row_bytes` each), and their squared
        norms (unpadded)."""
        scale, sq_norm = self.query_scale[_on(rows, self.device)], self.query_sq_norm[_on(rows, self.device)]
        query = self._padded_rows(self.query[_on(rows, self.query.device)])
        if self.unit_norm:
            query[:scale.shape[0]] *= scale[:, None]
        return query, sq_norm

    def _chunk_distances(self, query: torch.Tensor, sq_norm: torch.Tensor, start: int, chunk: torch.Tensor,
                         part: torch.Tensor) -> torch.Tensor:
        """Write the distances of the padded ``query`` rows to one gallery ``chunk`` (starting at gallery
        index ``start``) into ``part``; returns the rows of real queries."""
        end = start + part.shape[1]
        if chunk.shape[0] == part.shape[1]:
            torch.mm(query, chunk.T, out=part)
        else:  # the zero-padded last chunk: a float32 product of its padded width, then copied
            part.copy_(torch.mm(query, chunk.T)[:, :part.shape[1]])
        # Two separately rounded operations, not addcmul: a fused multiply-add in a vectorised loop and
        # not in its scalar tail would make a distance depend on the layout of the buffer it lands in.
        part.mul_(self.coef[start:end]).add_(self.offset[start:end])
        dist = part[:sq_norm.shape[0]]
        if self.metric != "cosine":
            dist.add_(sq_norm[:, None])
        if self.metric == "euclidean":
            dist.clamp_(min=0).sqrt_()
        return dist

    def _scales(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row scale (1/norm when normalising, else 1) and squared norm of the scaled row."""
        scales, sq_norms = [torch.zeros(0, device=self.device)], [torch.zeros(0, device=self.device)]
        for start in range(0, features.shape[0], self.chunk_rows):
            # At most one chunk converted at a time (the size of the conversion buffer, not yet allocated).
            chunk = features[start:start + self.chunk_rows].to(self.device, torch.float32)
            norm = torch.linalg.vector_norm(chunk, dim=1)  # a reduction: no chunk-sized temporary
            if not bool(torch.isfinite(norm).all()):
                raise ReIDError("A feature vector holds NaN or inf, or values too large for float32 (its norm "
                                "overflows); check the model's output before evaluating.")
            scale = 1.0 / norm.clamp(min=1e-12) if self.unit_norm else torch.ones_like(norm)
            scales.append(scale)
            sq_norms.append((norm * scale) ** 2)
        return torch.cat(scales), torch.cat(sq_norms)

    def _conversion_buffer_shape(self) -> tuple[int, int]:
        """Shape of the float32 buffer a gallery that is not multiplied in place is converted into."""
        return padded(min(self.chunk_rows, self.gallery.shape[0])), self.gallery.shape[1]

    def _gallery_chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first row, float32 rows)`` of each gallery chunk; rows are zero-padded to a multiple of 16."""
        num_g = self.gallery.shape[0]
        buffer = None
        for start in range(0, num_g, self.chunk_rows):
            rows = self.gallery[start:start + self.chunk_rows]
            if self.in_place:
                yield start, rows if self._tail is None or start + rows.shape[0] < num_g else self._tail
            else:
                if buffer is None:
                    buffer = torch.empty(self._conversion_buffer_shape(), device=self.device)
                num_padded = padded(rows.shape[0])
                buffer[:rows.shape[0]].copy_(rows)  # converts in place: no chunk-sized temporary
                buffer[rows.shape[0]:num_padded] = 0
                yield start, buffer[:num_padded]

    def _padded_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """A float32 copy of ``rows`` on the device with zero rows appended up to a multiple of 16."""
        out = torch.zeros((padded(rows.shape[0]), rows.shape[1]), device=self.device)
        out[:rows.shape[0]].copy_(rows)
        return out


def compute_distance_matrix(
    qf: ArrayLike,
    gf: ArrayLike,
    metric: str = "cosine",
    normalize: bool = False,
) -> torch.Tensor:
    """The full query x gallery float32 distance matrix that :func:`reid.evaluation.rank.evaluate_features`
    ranks.

    Bit-identical to the rows :func:`reid.evaluation.rank.evaluate_features` computes block by block.
    Meant for small problems, tests and visualisation: it allocates ``len(qf) x len(gf)`` floats.
    """
    return FeatureDistances(qf, gf, metric, normalize).matrix()


def fill_rows(out: torch.Tensor, compute: Callable[[int, int, torch.Tensor], torch.Tensor],
              rows_per_block: int) -> torch.Tensor:
    """Fill ``out`` (queries x gallery) by blocks of rows: ``compute(start, end, buffer)`` writes the
    rows ``start:end`` into ``buffer``, which needs ``end - start`` rounded up to a multiple of 16 rows.

    Blocks of a multiple of 16 rows are computed straight into ``out``; the last few rows go through
    a 16-row scratch buffer.
    """
    num_rows = out.shape[0]
    aligned = num_rows - num_rows % GEMM_ROWS
    for start in range(0, aligned, rows_per_block):
        end = min(start + rows_per_block, aligned)
        compute(start, end, out[start:end])
    if aligned < num_rows:
        out[aligned:] = compute(aligned, num_rows, torch.empty((GEMM_ROWS, out.shape[1]), device=out.device))
    return out


def _on(rows: QueryRows, device: torch.device) -> slice | torch.Tensor:
    """``rows`` as something that indexes a tensor on ``device``: a slice, or an int64 index tensor."""
    if isinstance(rows, slice):
        return rows
    return torch.as_tensor(np.asarray(rows) if not isinstance(rows, torch.Tensor) else rows,
                           dtype=torch.int64).reshape(-1).to(device)
