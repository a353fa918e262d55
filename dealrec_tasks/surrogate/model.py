"""SASRec (Kang & McAuley 2018) as the DEALRec surrogate, with the architecture of its reference PyTorch port.

Pure torch on tensors, no IO. Deviations from the reference port, all so that a sample's outputs never depend on
the batch it is in (influence scores must not change with batch size or sharding):

- padded keys are masked out of attention (the port lets real positions attend to left padding);
- position ids count from the end: a batch left-padded to ``L <= max_len`` gets the ids it would get padded to
  ``max_len``, so bucketed batches (short padding, much faster) give the same outputs as full padding;
- an extra ``BOS`` item (row ``n_items + 1`` of the item table) starts every input, so an empty history still has
  a position that predicts the target (7% of Games users have an empty training history).

Item indices are ``1..n_items``; 0 is padding; ``n_items + 1`` is BOS and is never a target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dealrec_tasks.scoring.config import BLOCKS  # the influence blocks, defined where no torch is needed
from dealrec_tasks.surrogate.config import SurrogateConfig

LN_EPS = 1e-8  # the reference port's LayerNorm epsilon


class Attention(nn.Module):
    """Multi-head self-attention with an explicit ``out_proj`` Linear (hooks and cached inputs can reach it)."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)
        self.dropout = dropout

    def context(self, q_in: Tensor, kv_in: Tensor, allowed: Tensor) -> Tensor:
        """Concatenated head outputs before ``out_proj``; ``allowed`` [B, 1, T, T] is True where a query may look."""
        b, t, h = q_in.shape
        d = h // self.heads

        def split(x: Tensor) -> Tensor:  # [B, T, H] -> [B, heads, T, d]
            return x.view(b, t, self.heads, d).transpose(1, 2)

        q, k, v = split(self.q_proj(q_in)), split(self.k_proj(kv_in)), split(self.v_proj(kv_in))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)  # [B, heads, T, d]
        return out.transpose(1, 2).reshape(b, t, h)  # [B, T, H]


class FeedForward(nn.Module):
    """Position-wise ``x + fc2(relu(fc1(x)))`` with dropout, as the port's PointWiseFeedForward."""

    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.fc2(self.drop(torch.relu(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden, eps=LN_EPS)
        self.attn = Attention(hidden, heads, dropout)
        self.ln2 = nn.LayerNorm(hidden, eps=LN_EPS)
        self.ffn = FeedForward(hidden, dropout)

    def forward(self, x: Tensor, allowed: Tensor, keep: Tensor) -> Tensor:
        q = self.ln1(x)  # [B, T, H]
        x = q + self.attn.out_proj(self.attn.context(q, x, allowed))
        return self.ffn(self.ln2(x)) * keep  # [B, T, H]


@dataclass
class BlockIO:
    """Inputs of a block's Linear at every position, plus what the position-wise network above needs."""

    a: Tensor  # [..., in] input of the Linear
    r: Tensor  # [..., H] the residual that joins its output


class SASRec(nn.Module):
    def __init__(self, n_items: int, cfg: SurrogateConfig):
        super().__init__()
        self.n_items = n_items
        self.max_len = cfg.max_len
        self.hidden = cfg.hidden
        self.item_emb = nn.Embedding(n_items + 2, cfg.hidden, padding_idx=0)  # 0 pad, 1..n items, n+1 BOS
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.hidden, cfg.heads, cfg.dropout) for _ in range(cfg.blocks))
        self.last_ln = nn.LayerNorm(cfg.hidden, eps=LN_EPS)
        self.reset_parameters()

    @property
    def bos(self) -> int:
        return self.n_items + 1

    def reset_parameters(self) -> None:
        """Xavier-normal on every matrix, as the reference port; LayerNorms at identity; padding row zero."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.xavier_normal_(p)
            elif "ln" in name and name.endswith("weight"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    # -- encoder ----------------------------------------------------------------------------------------------
    def _embed(self, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Embedded, masked inputs and the attention mask of a left-padded batch ``inputs`` [B, L]."""
        b, t = inputs.shape
        if t > self.max_len:
            raise ValueError(f"inputs have {t} positions, more than max_len={self.max_len}")
        keep = (inputs != 0).unsqueeze(-1).to(self.item_emb.weight.dtype)  # [B, L, 1]
        pos = torch.arange(self.max_len - t, self.max_len, device=inputs.device)  # [L], ids as if padded to max_len
        x = self.item_emb(inputs) * math.sqrt(self.hidden) + self.pos_emb(pos)  # [B, L, H]
        x = self.emb_drop(x) * keep
        real = inputs != 0  # [B, L]
        causal = torch.ones(t, t, dtype=torch.bool, device=inputs.device).tril()  # [L, L]
        eye = torch.eye(t, dtype=torch.bool, device=inputs.device)
        # Real queries see real keys up to themselves; a padded query sees only itself (no empty softmax row).
        allowed = (causal & real[:, None, :]) | eye  # [B, L, L]
        return x, allowed.unsqueeze(1), keep

    def forward(self, inputs: Tensor) -> Tensor:
        """Hidden state at every position [B, L, H] of left-padded item ids ``inputs`` [B, L]."""
        x, allowed, keep = self._embed(inputs)
        for block in self.blocks:
            x = block(x, allowed, keep)
        return self.last_ln(x)

    def item_weights(self) -> Tensor:
        """Output embeddings of the real items 1..n_items [n_items, H] (tied with the input table, as SASRec)."""
        return self.item_emb.weight[1 : self.n_items + 1]

    # -- parameter blocks for influence --------------------------------------------------------------------
    def block_linear(self, block: str) -> nn.Linear:
        last = self.blocks[-1]
        layers = {"attn_out": last.attn.out_proj, "ffn_in": last.ffn.fc1, "ffn_out": last.ffn.fc2}
        if block not in layers:
            raise ValueError(f"block={block!r}: choose one of {sorted(BLOCKS)}")
        return layers[block]

    def block_io(self, inputs: Tensor, block: str) -> BlockIO:
        """The chosen Linear's input and the residual at every position [B, L, *] (eval mode, no graph needed)."""
        x, allowed, keep = self._embed(inputs)
        for blk in self.blocks[:-1]:
            x = blk(x, allowed, keep)
        last = self.blocks[-1]
        q = last.ln1(x)
        ctx = last.attn.context(q, x, allowed)
        if block == "attn_out":
            return BlockIO(ctx, q)
        y = last.ln2(q + last.attn.out_proj(ctx))
        if block == "ffn_in":
            return BlockIO(y, y)
        if block == "ffn_out":
            return BlockIO(torch.relu(last.ffn.fc1(y)), y)
        raise ValueError(f"block={block!r}: choose one of {sorted(BLOCKS)}")

    def block_tail(self, block: str) -> Callable[[Tensor, Tensor], Tensor]:
        """``(z, r) -> h``: the position-wise network from the Linear's output z to the final hidden state.

        Valid at real positions in eval mode (dropout off): there the padding mask is 1.
        """
        last = self.blocks[-1]
        ffn = last.ffn
        if block == "attn_out":
            return lambda z, r: self.last_ln(ffn(last.ln2(r + z)))
        if block == "ffn_in":
            return lambda z, r: self.last_ln(r + ffn.fc2(torch.relu(z)))
        if block == "ffn_out":
            return lambda z, r: self.last_ln(r + z)
        raise ValueError(f"block={block!r}: choose one of {sorted(BLOCKS)}")


def bce_sampled(h: Tensor, pos: Tensor, neg: Tensor, item_w: Tensor) -> Tensor:
    """The paper's loss per position [N]: BCE of the positive and of one sampled negative.

    h [N, H] hidden states, pos/neg [N] item indices 1..n, item_w [n, H] output embeddings of items 1..n.
    """
    s_pos = (h * item_w[pos - 1]).sum(-1)  # [N]
    s_neg = (h * item_w[neg - 1]).sum(-1)  # [N]
    return F.softplus(-s_pos) + F.softplus(s_neg)


@dataclass(frozen=True)
class WeightedNegatives:
    """A fixed negative set with Horvitz-Thompson weights: sum_j weights_j f(items_j) - pos_weight f(pos)
    estimates the mean of f over the items other than the positive, without bias, for any inclusion scheme
    (items that are always included weigh 1/(n-1), sampled ones 1/(p_j (n-1)))."""

    items: Tensor  # [K] item indices 1..n
    weights: Tensor  # [K]
    pos_weight: float  # 1 / (n - 1)

    def __len__(self) -> int:
        return len(self.items)

    def to_payload(self) -> dict[str, Tensor]:
        return {"negatives": self.items, "negative_weights": self.weights, "pos_weight": torch.tensor(self.pos_weight)}


Negatives = Tensor | WeightedNegatives


def negatives_from_payload(payload: dict[str, Tensor]) -> Negatives:
    if "negative_weights" in payload:
        return WeightedNegatives(payload["negatives"], payload["negative_weights"], float(payload["pos_weight"]))
    return payload["negatives"]


def bce_expected(h: Tensor, pos: Tensor, negatives: Negatives, item_w: Tensor) -> Tensor:
    """Per-position loss [N] with the expectation over negatives, estimated on one fixed set ``negatives`` [K].

    A plain set [K]: the mean over it, the positive left out where it belongs to the set, so every position
    averages over the items other than its target. A ``WeightedNegatives``: its unbiased weighted estimate.
    With the set fixed (seeded), the loss of a sample depends only on the sample.
    """
    s_pos = (h * item_w[pos - 1]).sum(-1)  # [N]
    if isinstance(negatives, WeightedNegatives):
        s_neg = h @ item_w[negatives.items - 1].T  # [N, K]
        neg = F.softplus(s_neg) @ negatives.weights.to(h.dtype) - negatives.pos_weight * F.softplus(s_pos)
        return F.softplus(-s_pos) + neg
    s_neg = h @ item_w[negatives - 1].T  # [N, K]
    # Leaving the positive out by subtraction avoids an [N, K] mask (the head dominates the scoring time).
    in_set = torch.isin(pos, negatives).to(h.dtype)  # [N]
    neg_sum = F.softplus(s_neg).sum(-1) - in_set * F.softplus(s_pos)  # [N]
    return F.softplus(-s_pos) + neg_sum / (len(negatives) - in_set)


def bce_expected_grad(h: Tensor, pos: Tensor, negatives: Negatives, item_w: Tensor, chunk: int = 8192) -> Tensor:
    """d bce_expected / dh [N, H], in closed form: no softplus, no autograd graph over the [N, K] scores.

    -sigmoid(-s_pos) e_pos + (sum_j sigmoid(s_j) e_j - [pos in set] sigmoid(s_pos) e_pos) / (K - [pos in set]).
    The pass that collects per-sample gradients spends almost all its time on the K negatives; this is
    about twice as fast as differentiating ``bce_expected``, and equal to it (tested).
    """
    weighted = isinstance(negatives, WeightedNegatives)
    e_neg = item_w[(negatives.items if weighted else negatives) - 1]  # [K, H]
    out = torch.empty_like(h)
    for i in range(0, len(h), chunk):
        hc, pc = h[i : i + chunk], pos[i : i + chunk]
        e_pos = item_w[pc - 1]  # [c, H]
        s_pos = (hc * e_pos).sum(-1)  # [c]
        if weighted:
            neg = torch.sigmoid_(hc @ e_neg.T).mul_(negatives.weights.to(h.dtype)) @ e_neg  # [c, H]
            neg = neg - (negatives.pos_weight * torch.sigmoid(s_pos))[:, None] * e_pos
            out[i : i + chunk] = neg - torch.sigmoid(-s_pos)[:, None] * e_pos
            continue
        in_set = torch.isin(pc, negatives).to(h.dtype)  # [c]
        neg = torch.sigmoid_(hc @ e_neg.T) @ e_neg  # [c, H]
        neg = (neg - (in_set * torch.sigmoid(s_pos))[:, None] * e_pos) / (len(negatives) - in_set)[:, None]
        out[i : i + chunk] = neg - torch.sigmoid(-s_pos)[:, None] * e_pos
    return out


def expand_state_dict(state: dict[str, Tensor], model: SASRec) -> dict[str, Tensor]:
    """Warm start: a previous day's weights in a model whose (append-only) item vocab may have grown.

    Known items and BOS keep their rows; new items keep the fresh initialisation of ``model``.
    """
    old = state["item_emb.weight"]  # [n_old + 2, H]
    new = model.item_emb.weight.detach().clone()  # [n_new + 2, H]
    n_old, n_new = old.shape[0] - 2, model.n_items
    if n_old > n_new:
        raise ValueError(f"checkpoint has {n_old} items, more than the current vocab ({n_new}); vocab is append-only")
    if old.shape[1] != new.shape[1]:
        raise ValueError(f"checkpoint hidden size {old.shape[1]} differs from the model's {new.shape[1]}")
    new[: n_old + 1] = old[: n_old + 1]
    new[n_new + 1] = old[n_old + 1]  # BOS moves to the end of the grown table
    out = dict(state)
    out["item_emb.weight"] = new
    return out
