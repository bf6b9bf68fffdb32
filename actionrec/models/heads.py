"""Temporal heads over per-frame features (B, T, D) -> logits (B, num_classes).

``LSTMHead``: stacked (bi)LSTM with packed sequences for variable valid lengths, then pooling
('last' hidden state of each direction, masked 'mean' over time, or additive 'attention' as in
the CNN-LSTM-attention action recognition designs), dropout and a linear classifier.
``TransformerHead``: a small pre-norm transformer encoder with learned positions (self-attention
over time, the step after the LSTM), same pooling options.
``MeanHead``: the frame-averaging baseline (no temporal order).
``MotionCorrelation``: parameter-free motion features from consecutive frames' feature maps.
``TemporalContrast``: the clip's end-minus-start appearance change, an order-aware summary the
LSTM and transformer heads can take next to their pooled steps (``extra_dim``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

DROPOUT = 0.5  # before every head's classifier; the one default model.dropout and create_model use


def valid_mask(lengths: torch.Tensor | None, batch: int, steps: int, device: torch.device) -> torch.Tensor:
    """(B, T) bool mask of valid time steps (all True when ``lengths`` is None)."""
    if lengths is None:
        return torch.ones(batch, steps, dtype=torch.bool, device=device)
    return torch.arange(steps, device=device)[None, :] < lengths.to(device)[:, None]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> (B, D): the mean over the valid steps of ``mask`` (B, T)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1)


class AdditiveAttention(nn.Module):
    """score_t = v^T tanh(W h_t); softmax over valid steps; returns sum_t a_t h_t and the weights."""

    def __init__(self, dim: int, attn_dim: int = 128):
        super().__init__()
        self.proj = nn.Linear(dim, attn_dim)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.v(torch.tanh(self.proj(h))).squeeze(-1)  # (B, T)
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores.float(), dim=1).to(h.dtype)
        return torch.einsum("bt,btd->bd", weights, h), weights


def check_pooling(pooling: str) -> None:
    if pooling not in ("last", "mean", "attention"):
        raise ValueError(f"pooling must be last, mean or attention, got {pooling!r}")


class _PooledHead(nn.Module):
    """The end the LSTM and transformer heads share: pool (B, T, D) over valid steps, dropout, linear."""

    def _build_classifier(self, dim: int, num_classes: int, pooling: str, dropout: float, extra_dim: int = 0) -> None:
        self.pooling = pooling
        self.attention = AdditiveAttention(dim) if pooling == "attention" else None
        self.dropout = nn.Dropout(dropout)
        self.extra_dim = extra_dim
        self.fc = nn.Linear(dim + extra_dim, num_classes)
        self.out_dim = dim

    def classify(self, x: torch.Tensor, mask: torch.Tensor, last: torch.Tensor | None,
                 extra: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) steps, (B, T) valid mask, the (B, D) 'last' pooling (None for the others) and
        ``extra_dim`` clip-level features (B, E) that join the pooled vector -> logits."""
        if self.pooling == "last":
            pooled = last
        elif self.pooling == "mean":
            pooled = masked_mean(x, mask)
        else:
            pooled, _ = self.attention(x, mask)
        if (extra is None) != (self.extra_dim == 0):
            raise ValueError(f"head built with extra_dim={self.extra_dim} got extra={None if extra is None else tuple(extra.shape)}")
        if extra is not None:
            pooled = torch.cat([pooled, extra.to(pooled.dtype)], -1)
        return self.fc(self.dropout(pooled))


class LSTMHead(_PooledHead):
    """(B, T, D) features -> (B, num_classes) logits through a stacked (bi)LSTM."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        hidden_size: int = 512,
        num_layers: int = 2,
        bidirectional: bool = True,
        lstm_dropout: float = 0.2,
        pooling: str = "attention",
        dropout: float = DROPOUT,
        extra_dim: int = 0,
    ):
        super().__init__()
        check_pooling(pooling)
        self.lstm = nn.LSTM(
            in_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=lstm_dropout if num_layers > 1 else 0.0,
        )
        self._build_classifier(hidden_size * (2 if bidirectional else 1), num_classes, pooling, dropout, extra_dim)
        self.reset_lstm_parameters()

    def reset_lstm_parameters(self) -> None:
        # Orthogonal recurrent weights keep gradients stable through time; forget-gate bias 1
        # (Jozefowicz et al. 2015) lets early training carry information across steps.
        for name, p in self.lstm.named_parameters():
            if "weight_hh" in name:
                for chunk in p.data.chunk(4, 0):
                    nn.init.orthogonal_(chunk)
            elif "weight_ih" in name:
                nn.init.xavier_uniform_(p.data)
            elif "bias" in name:
                p.data.zero_()
                hs = p.shape[0] // 4
                if "bias_ih" in name:
                    p.data[hs : 2 * hs] = 1.0

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = feats.shape
        mask = valid_mask(lengths, b, t, feats.device)
        if lengths is not None:
            packed = pack_padded_sequence(feats, lengths.cpu().clamp(1, t), batch_first=True, enforce_sorted=False)
            out, (h_n, _) = self.lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=t)  # (B, T, H*dirs)
        else:
            out, (h_n, _) = self.lstm(feats)
        last = None
        if self.pooling == "last":
            # h_n: (layers*dirs, B, H); the top layer's forward state saw the whole sequence left
            # to right, its backward state right to left.
            dirs = 2 if self.lstm.bidirectional else 1
            last = torch.cat([h_n[-dirs + i] for i in range(dirs)], dim=1)
        return self.classify(out, mask, last, extra)


class MeanHead(nn.Module):
    """Frame-averaging baseline: masked mean of frame features, dropout, linear. Order-blind."""

    def __init__(self, in_dim: int, num_classes: int, *, dropout: float = DROPOUT):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)
        self.out_dim = in_dim

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = feats.shape
        pooled = masked_mean(feats, valid_mask(lengths, b, t, feats.device))
        return self.fc(self.dropout(pooled))



class TransformerHead(_PooledHead):
    """(B, T, D) features -> logits through a pre-norm transformer encoder over time.

    Input projection to ``hidden_size`` with LayerNorm, learned position embeddings (up to
    ``max_len`` steps), ``num_layers`` pre-norm encoder layers (4 heads, GELU MLP of twice the
    width), final LayerNorm, then the same pooling as ``LSTMHead``. Padded steps (``lengths``) are
    masked out of attention and pooling.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        attn_dropout: float = 0.1,
        pooling: str = "mean",
        dropout: float = DROPOUT,
        max_len: int = 128,
        extra_dim: int = 0,
    ):
        super().__init__()
        check_pooling(pooling)
        if hidden_size % num_heads:
            raise ValueError(f"transformer hidden_size={hidden_size} must be a multiple of {num_heads} heads")
        self.max_len = max_len
        self.proj = nn.Sequential(nn.Linear(in_dim, hidden_size), nn.LayerNorm(hidden_size))
        self.pos = nn.Parameter(torch.zeros(1, max_len, hidden_size))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.layers = nn.ModuleList(_EncoderLayer(hidden_size, num_heads, attn_dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)
        self._build_classifier(hidden_size, num_classes, pooling, dropout, extra_dim)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = feats.shape
        if t > self.max_len:
            raise ValueError(f"transformer head: {t} time steps, more than its {self.max_len} positions")
        mask = valid_mask(lengths, b, t, feats.device)
        x = self.proj(feats) + self.pos[:, :t]
        attn_mask = None if lengths is None else mask[:, None, None, :]  # (B, 1, 1, T): keys a query may see
        for layer in self.layers:
            x = layer(x, attn_mask)
        x = self.norm(x)
        last = None
        if self.pooling == "last":
            last = x[torch.arange(b, device=x.device), (mask.long().sum(1) - 1).clamp_min(0)]
        return self.classify(x, mask, last, extra)


class _EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer (self-attention, GELU MLP of twice the width).

    Written out instead of ``nn.TransformerEncoderLayer``, whose ``MultiheadAttention`` traced
    into ONNX with the example's batch size fixed in its reshapes; shapes here come only from
    ``unflatten``/``flatten``, so the exported head takes any batch and window length.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.p = num_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
        y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                                       dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.out(y.transpose(1, 2).flatten(2)))
        return x + self.drop(self.mlp(self.norm2(x)))


# MotionCorrelation computes every position pair of two maps in one batched product up to this map
# side, and one product per displacement above it: the pairs grow as side^4 (154 MB for 16 clips of 16
# frames at 20), and the product does side^2 / 25 times the work. Batch 16, 16 frames, 32 channels,
# 1 thread of a 2-core Xeon: the product is 2.6x as fast at side 10, 1.6x at 14, 2.0x at 20, 0.7x at 28.
ALL_PAIRS_MAX_SIZE = 20


class MotionCorrelation(nn.Module):
    """Motion features: the correlation (cost volume) of consecutive frames' feature maps.

    As in correlation-based action models (FlowNet's correlation layer; Wang et al., "Video
    Modeling with Correlation Networks", CVPR 2020; MotionSqueeze, ECCV 2020): for every position of
    frame t's L2-normalised map and every displacement within ``radius``, the cosine similarity with
    frame t+1. Where the best match lies tells how things moved (a pan shifts all positions the same
    way, a zoom spreads them, an actor moves a few): motion that a frozen, image-trained backbone's
    pooled features do not carry. The volume is averaged over a ``grid`` x ``grid`` layout of the
    map and flattened; the last step gets zeros. Parameter-free and exportable (a batched matrix
    product and an index, or pads and slices for maps over ``ALL_PAIRS_MAX_SIZE``).

    ``temperature`` > 0 first turns each position's similarities into a distribution over the
    displacements (softmax of similarity / temperature, as MotionSqueeze's soft matching), so a
    cell's average says which share of its positions moved which way: a small actor sliding counts
    as much as its size, where the raw similarities of the still background around it, high at
    every displacement on smooth texture, drown it. 0 keeps the raw cosine similarities.

    Input (B, T, C * size * size) flattened maps; output (B, T, (2 radius + 1)^2 * grid^2).
    """

    def __init__(self, channels: int, size: int, *, radius: int = 2, grid: int = 3, temperature: float = 0.0):
        super().__init__()
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.channels, self.size, self.radius, self.grid = channels, size, radius, grid
        self.temperature = float(temperature)
        self.out_dim = (2 * radius + 1) ** 2 * grid**2
        self.all_pairs = size <= ALL_PAIRS_MAX_SIZE  # how forward computes it (the same values either way)
        # Where each (position, displacement) pair lies in the all-pairs similarity matrix of two
        # frames, flattened, and whether the displaced position is inside the map (else 0, as zero
        # padding gives). Derived, not learned: kept out of the state dict.
        p = size * size
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        index, inside = [], []
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                yy, xx = ys + dy, xs + dx
                ok = (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
                index.append(torch.arange(p) * p + torch.where(ok, yy * size + xx, 0).flatten())
                inside.append(ok.flatten().float())
        self.register_buffer("_index", torch.stack(index).flatten(), persistent=False)  # (D2 * P,)
        self.register_buffer("_inside", torch.stack(inside).flatten(), persistent=False)

    def forward(self, maps: torch.Tensor, *, raw: bool = False) -> torch.Tensor:
        """``raw``: the cosine similarities even when ``temperature`` > 0."""
        from actionrec.models.cnn_lstm import grid_cells

        b, t, _ = maps.shape
        s = self.size
        if t < 2:
            return maps.new_zeros(b, t, self.out_dim)
        m = nn.functional.normalize(maps.reshape(b, t, self.channels, s * s), dim=2)
        cur = m[:, :-1].reshape(b * (t - 1), self.channels, s * s)
        nxt = m[:, 1:].reshape(b * (t - 1), self.channels, s * s)
        vol = self._all_pairs(cur, nxt) if self.all_pairs else self._per_displacement(cur, nxt)
        if self.temperature > 0 and not raw:
            vol = torch.softmax(vol / self.temperature, dim=1)  # over the displacements, per position
        vol = grid_cells(vol, self.grid).reshape(b, t - 1, self.out_dim)
        return torch.cat([vol, vol.new_zeros(b, 1, self.out_dim)], 1)

    def mirror(self, out: torch.Tensor) -> torch.Tensor:
        """(..., out_dim) output -> the output for the maps flipped left-right: displacement dx
        becomes -dx and the grid's columns swap (exact: the same dot products, moved)."""
        d = 2 * self.radius + 1
        return out.unflatten(-1, (d, d, self.grid, self.grid)).flip(-3).flip(-1).flatten(-4)

    def _all_pairs(self, cur: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """(N, C, s*s) unit-norm maps of frames t and t+1 -> (N, D2, s, s): every position pair in one
        batched matrix product, then the displacements picked out of it by index."""
        n, s, d2 = cur.shape[0], self.size, (2 * self.radius + 1) ** 2
        pairs = torch.bmm(cur.transpose(1, 2), nxt).reshape(n, s**4)
        return (pairs.index_select(1, self._index) * self._inside).view(n, d2, s, s)

    def _per_displacement(self, cur: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """The same as ``_all_pairs`` by the definition: one channel dot product per displacement
        with the next frame shifted and zero-padded."""
        n, c, s, r = cur.shape[0], self.channels, self.size, self.radius
        cur = cur.reshape(n, c, s, s)
        nxt = nn.functional.pad(nxt.reshape(n, c, s, s), (r, r, r, r))
        return torch.stack([(cur * nxt[:, :, dy : dy + s, dx : dx + s]).sum(1)
                            for dy in range(2 * r + 1) for dx in range(2 * r + 1)], 1)


class TemporalContrast(nn.Module):
    """How the clip's appearance changed from its start to its end: an order-aware clip summary.

    Each frame's appearance features are layer-normalised and projected to ``out_dim``; the result
    is the mean over the last ``fraction`` of the valid steps minus the mean over the first. It
    flips sign when the clip is played backwards, so it tells apart classes that are each
    other's time reversal by *what* is there before and after (an object that appears vs one
    that vanishes, where the motion between frames looks the same both ways). A linear summary
    over fixed segments, as TSN's segment consensus but signed, which few training videos
    suffice to fit; the heads take it next to their pooled steps (``extra_dim``).

    Input (B, T, D) features and a (B, T) valid mask; output (B, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int = 16, *, fraction: float = 0.25):
        super().__init__()
        if not 0 < fraction <= 0.5:
            raise ValueError(f"fraction must be in (0, 0.5], got {fraction}")
        self.fraction, self.out_dim = fraction, out_dim
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        p = self.proj(feats)
        n = mask.long().sum(1, keepdim=True)  # (B, 1) valid steps
        k = (n.float() * self.fraction).floor().long().clamp_min(1)
        idx = torch.arange(feats.shape[1], device=feats.device)[None, :]
        first = idx < k
        last = (idx >= n - k) & (idx < n)
        return masked_mean(p, last) - masked_mean(p, first)
