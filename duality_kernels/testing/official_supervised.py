"""Independent transcriptions of the official formulas of the supervised / negative-sampling losses,
written from the papers' reference code (eager, dense matrices, in the inputs' dtype and device): the
tests' oracle and the benchmarks' "eager" provider.

- SupContrast ``losses.py`` ``SupConLoss`` (current version: an anchor without a positive divides by
  1 instead of 0), applied to L2-normalized features;
- solo-learn ``moco_loss_func`` (its queue is [D, K]; here it is passed as rows [K, D]);
- joshr17/HCL ``image/main.py`` ``criterion`` with estimator "hard";
- lightly 1.6 ``NTXentLoss`` with a memory bank (a FIFO of past second-view rows) and ``DCLLoss``
  with a weight function (DCLW's negative von Mises-Fisher weights).
"""

import math

import torch
import torch.nn.functional as F


def supcon(features, labels=None, temperature=0.07, base_temperature=0.07, contrast_mode="all"):
    features = F.normalize(features, dim=-1)
    b, views = features.shape[0], features.shape[1]
    if labels is None:
        same = torch.eye(b, dtype=features.dtype, device=features.device)
    else:
        lab = labels.reshape(-1, 1)
        same = (lab == lab.T).to(features.dtype)
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)          # view-major rows
    if contrast_mode == "one":
        anchor, count = features[:, 0], 1
    else:
        anchor, count = contrast, views
    logits = anchor @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    same = same.repeat(count, views)
    not_self = torch.ones_like(same)
    idx = torch.arange(b * count, device=features.device)
    not_self[idx, idx] = 0
    positive = same * not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(dim=1, keepdim=True))
    n_pos = positive.sum(dim=1)
    n_pos = torch.where(n_pos < 1e-6, torch.ones_like(n_pos), n_pos)
    mean_log_prob_pos = (positive * log_prob).sum(dim=1) / n_pos
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(count, b).mean()


def moco(query, key, queue, temperature=0.2):
    q, k, bank = F.normalize(query, dim=1), F.normalize(key, dim=1), F.normalize(queue.detach(), dim=1)
    pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    neg = torch.einsum("nc,kc->nk", q, bank)
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def hcl(z1, z2, temperature=0.5, tau_plus=0.1, beta=1.0):
    out_1, out_2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = out_1.shape[0]
    out = torch.cat([out_1, out_2], dim=0)
    neg = torch.exp(out @ out.T / temperature)
    keep = torch.ones(n, 2 * n, dtype=torch.bool, device=out.device)
    idx = torch.arange(n, device=out.device)
    keep[idx, idx] = False
    keep[idx, idx + n] = False
    keep = torch.cat([keep, keep], dim=0)
    neg = neg.masked_select(keep).view(2 * n, -1)
    pos = torch.exp((out_1 * out_2).sum(dim=-1) / temperature)
    pos = torch.cat([pos, pos], dim=0)
    big_n = 2 * n - 2
    imp = (beta * neg.log()).exp()
    reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
    ng = (-tau_plus * big_n * pos + reweight_neg) / (1 - tau_plus)
    ng = torch.clamp(ng, min=big_n * math.e ** (-1 / temperature))
    return (-torch.log(pos / (pos + ng))).mean()


class MemoryBankNTXent:
    """lightly's NTXentLoss(memory_bank_size=(K, D)), step by step, from a given initial bank."""

    def __init__(self, bank, temperature=0.5):
        self.bank = bank.detach().clone().float()   # lightly's bank is float32
        self.ptr = 0
        self.temperature = temperature

    def __call__(self, out0, out1):
        out0, out1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
        negatives = self.bank.clone().to(out0.dtype)
        update = out0.requires_grad
        pos = (out0 * out1).sum(dim=1, keepdim=True)
        logits = torch.cat([pos, out0 @ negatives.T], dim=1) / self.temperature
        loss = F.cross_entropy(logits, torch.zeros(out0.shape[0], dtype=torch.long, device=out0.device))
        if update:
            k, n = self.bank.shape[0], out1.shape[0]
            if self.ptr + n >= k:
                self.bank[self.ptr:] = out1.detach()[:k - self.ptr]
                self.ptr = 0
            else:
                self.bank[self.ptr:self.ptr + n] = out1.detach()
                self.ptr += n
        return loss


def vmf_weights(out0, out1, sigma=0.5):
    s = (out0.detach() * out1.detach()).sum(dim=1) / sigma
    return 2 - out0.shape[0] * torch.softmax(s, dim=0)


def weighted_dcl(z1, z2, temperature=0.1, weight_fn=None):
    out0, out1 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)

    def one_side(a, b):
        n = a.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=a.device)
        s_aa = a @ a.T / temperature
        s_ab = a @ b.T / temperature
        positive = -s_ab[eye]
        if weight_fn is not None:
            positive = positive * weight_fn(a, b)
        negatives = torch.cat([s_aa[~eye].view(n, -1), s_ab[~eye].view(n, -1)], dim=1)
        return (positive + torch.logsumexp(negatives, dim=1)).mean()

    return 0.5 * (one_side(out0, out1) + one_side(out1, out0))
