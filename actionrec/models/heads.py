"""Temporal heads over per-frame features (B, T, D) -> logits (B, num_classes).

``LSTMHead``: stacked (bi)LSTM with packed sequences for variable valid lengths, then pooling
('last' hidden state of each direction, masked 'mean' over time, or additive 'attention' as in
the CNN-LSTM-attention action recognition designs), dropout and a linear classifier.
``MeanHead``: the frame-averaging baseline (no temporal order).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def valid_mask(lengths: torch.Tensor | None, batch: int, steps: int, device: torch.device) -> torch.Tensor:
    """(B, T) bool mask of valid time steps (all True when ``lengths`` is None)."""
    if lengths is None:
        return torch.ones(batch, steps, dtype=torch.bool, device=device)
    return torch.arange(steps, device=device)[None, :] < lengths.to(device)[:, None]


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


class LSTMHead(nn.Module):
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
        dropout: float = 0.5,
    ):
        super().__init__()
        if pooling not in ("last", "mean", "attention"):
            raise ValueError(f"pooling must be last, mean or attention, got {pooling!r}")
        self.pooling = pooling
        self.lstm = nn.LSTM(
            in_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=lstm_dropout if num_layers > 1 else 0.0,
        )
        out_dim = hidden_size * (2 if bidirectional else 1)
        self.attention = AdditiveAttention(out_dim) if pooling == "attention" else None
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(out_dim, num_classes)
        self.out_dim = out_dim
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

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = feats.shape
        mask = valid_mask(lengths, b, t, feats.device)
        if lengths is not None:
            packed = pack_padded_sequence(feats, lengths.cpu().clamp(1, t), batch_first=True, enforce_sorted=False)
            out, (h_n, _) = self.lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=t)  # (B, T, H*dirs)
        else:
            out, (h_n, _) = self.lstm(feats)
        if self.pooling == "last":
            # h_n: (layers*dirs, B, H); the top layer's forward state saw the whole sequence left
            # to right, its backward state right to left.
            dirs = 2 if self.lstm.bidirectional else 1
            pooled = torch.cat([h_n[-dirs + i] for i in range(dirs)], dim=1)
        elif self.pooling == "mean":
            m = mask.unsqueeze(-1).to(out.dtype)
            pooled = (out * m).sum(1) / m.sum(1).clamp_min(1)
        else:
            pooled, _ = self.attention(out, mask)
        return self.fc(self.dropout(pooled))


class MeanHead(nn.Module):
    """Frame-averaging baseline: masked mean of frame features, dropout, linear. Order-blind."""

    def __init__(self, in_dim: int, num_classes: int, *, dropout: float = 0.5):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)
        self.out_dim = in_dim

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = feats.shape
        m = valid_mask(lengths, b, t, feats.device).unsqueeze(-1).to(feats.dtype)
        pooled = (feats * m).sum(1) / m.sum(1).clamp_min(1)
        return self.fc(self.dropout(pooled))

