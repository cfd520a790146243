"""token_divergence against a direct, loop-based computation; chunked path equals direct path."""

from __future__ import annotations

import math

import pytest
import torch

from copsd.losses import chunked_token_divergence, token_divergence


def _direct(s_logits, t_logits, kind, beta, temperature, clip):
    """Entry-by-entry reference with plain probabilities (float64)."""
    out = torch.zeros(s_logits.shape[:-1], dtype=torch.float64)
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in s_logits.shape[:-1]]).reshape(-1, s_logits.dim() - 1):
        idx = tuple(idx.tolist())
        ps = torch.softmax(s_logits[idx].double() / temperature, -1)
        pt = torch.softmax(t_logits[idx].double() / temperature, -1)
        total = 0.0
        for v in range(ps.shape[0]):
            a, b = float(pt[v]), float(ps[v])
            if kind == "forward_kl":
                e = a * (math.log(a) - math.log(b))
            elif kind == "reverse_kl":
                e = b * (math.log(b) - math.log(a))
            else:
                m = beta * a + (1 - beta) * b
                e = beta * a * (math.log(a) - math.log(m)) + (1 - beta) * b * (math.log(b) - math.log(m))
            total += min(e, clip) if clip is not None else e
        out[idx] = total
    return out


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("clip", [None, 0.05])
@pytest.mark.parametrize("temperature", [1.0, 1.1])
def test_token_divergence_matches_direct(kind, clip, temperature):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 11, generator=g) * 2
    t = torch.randn(2, 3, 11, generator=g) * 2
    got = token_divergence(s, t, kind=kind, beta=0.3, temperature=temperature, clip=clip)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got.double(), _direct(s, t, kind, 0.3, temperature, clip), rtol=1e-5, atol=1e-6)


def test_clip_can_make_a_token_negative_and_zero_gradient_where_clamped():
    s = torch.tensor([[4.0, 0.0, 0.0, -3.0]], requires_grad=True)
    t = torch.tensor([[-3.0, 0.0, 0.0, 4.0]])
    d = token_divergence(s, t, clip=0.05)
    unclipped = token_divergence(s, t)
    assert float(d) < float(unclipped)
    d.sum().backward()
    # the entry where the teacher puts its mass diverges > 0.05 and is clamped: no gradient through it
    assert s.grad is not None
    # a teacher equal to the student gives exactly zero divergence and zero gradient
    s2 = t.clone().requires_grad_(True)
    z = token_divergence(s2, t, clip=0.05)
    z.sum().backward()
    assert float(z.abs().max()) < 1e-6 and float(s2.grad.abs().max()) < 1e-6


def test_masked_positions_do_not_contribute():
    s = torch.randn(1, 5, 7, requires_grad=True)
    t = torch.randn(1, 5, 7)
    mask = torch.tensor([[0, 1, 1, 0, 0]], dtype=torch.float32)
    per = token_divergence(s, t)
    loss = (per * mask).sum() / mask.sum()
    loss.backward()
    assert float(s.grad[0, 0].abs().sum()) == 0 and float(s.grad[0, 3:].abs().sum()) == 0
    assert float(s.grad[0, 1].abs().sum()) > 0


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("clip", [None, 0.05])
def test_chunked_equals_direct_in_value_and_gradient(kind, clip):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hs = torch.randn(37, 16, requires_grad=True)
    ht = torch.randn(37, 16)
    direct = token_divergence(head(hs), head(ht), kind=kind, beta=0.4, temperature=1.1, clip=clip)
    (g_direct,) = torch.autograd.grad(direct.sum(), hs)
    hs2 = hs.detach().clone().requires_grad_(True)
    chunked = chunked_token_divergence(hs2, ht, head, kind=kind, beta=0.4, temperature=1.1, clip=clip, chunk_size=8)
    (g_chunked,) = torch.autograd.grad(chunked.sum(), hs2)
    torch.testing.assert_close(chunked, direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_chunked, g_direct, rtol=1e-5, atol=1e-6)


def test_forward_kl_is_what_the_paper_code_computes():
    """beta=0 in the released code = F.kl_div(student_logp, teacher_logp, log_target=True) summed over V."""
    s, t = torch.randn(3, 9), torch.randn(3, 9)
    ref = torch.nn.functional.kl_div(
        torch.log_softmax(s, -1), torch.log_softmax(t, -1), reduction="none", log_target=True
    ).sum(-1)
    torch.testing.assert_close(token_divergence(s, t, kind="forward_kl"), ref)


def test_token_rescale_caps_the_value_and_keeps_the_gradient_direction():
    torch.manual_seed(1)
    s = (torch.randn(6, 13) * 3).requires_grad_(True)
    t = torch.randn(6, 13) * 3
    raw = token_divergence(s, t)
    assert (raw > 0.5).any()
    capped = token_divergence(s, t, clip=0.5, clip_mode="token_rescale")
    torch.testing.assert_close(capped, raw.clamp(max=0.5))
    (g_raw,) = torch.autograd.grad(raw.sum(), s)
    (g_cap,) = torch.autograd.grad(token_divergence(s, t, clip=0.5, clip_mode="token_rescale").sum(), s)
    for i in range(6):  # same direction per token, never silenced
        cos = torch.nn.functional.cosine_similarity(g_raw[i], g_cap[i], dim=0)
        assert float(cos) > 0.999 and float(g_cap[i].abs().sum()) > 0
    with pytest.raises(ValueError):
        token_divergence(s, t, clip=0.5, clip_mode="nope")


@pytest.mark.parametrize(("beta", "same_as"), [(0.0, "forward_kl"), (1.0, "reverse_kl")])
def test_jsd_endpoints_mean_what_the_released_code_means(beta, same_as):
    """The released generalized JSD: beta = 0 is KL(p_T || p_S), beta = 1 is KL(p_S || p_T) (not 0)."""
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 13, generator=g), torch.randn(4, 13, generator=g)
    got = token_divergence(s, t, kind="jsd", beta=beta, temperature=1.1, clip=0.05)
    torch.testing.assert_close(got, token_divergence(s, t, kind=same_as, temperature=1.1, clip=0.05))
    assert float(got.abs().sum()) > 0
