"""ACE-Step v1 Conformer lyric encoder: official weight layout, the attention it computes,
independence from batch padding, empty lyrics and the ERG query hook."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from serve_app.pipeline.acestep_v1.lyric_encoder import LyricConformer

TINY = dict(input_size=12, output_size=16, attention_heads=2, linear_units=24, num_blocks=6)
ERG_LAYERS = (4, 5)


def _official_layout(input_size=1024, dim=1024, heads=16, hidden=4096, blocks=6) -> dict[str, tuple[int, ...]]:
    """Names and shapes under `lyric_encoder.` in the official ACE-Step v1 transformer checkpoint."""
    layout = {
        "embed.out.0.weight": (dim, input_size),
        "embed.out.0.bias": (dim,),
        "embed.out.1.weight": (dim,),
        "embed.out.1.bias": (dim,),
        "after_norm.weight": (dim,),
        "after_norm.bias": (dim,),
    }
    for index in range(blocks):
        layer = f"encoders.{index}."
        for projection in ("linear_q", "linear_k", "linear_v", "linear_out"):
            layout[f"{layer}self_attn.{projection}.weight"] = (dim, dim)
            layout[f"{layer}self_attn.{projection}.bias"] = (dim,)
        layout[f"{layer}self_attn.linear_pos.weight"] = (dim, dim)
        layout[f"{layer}self_attn.pos_bias_u"] = (heads, dim // heads)
        layout[f"{layer}self_attn.pos_bias_v"] = (heads, dim // heads)
        layout[f"{layer}feed_forward.w_1.weight"] = (hidden, dim)
        layout[f"{layer}feed_forward.w_1.bias"] = (hidden,)
        layout[f"{layer}feed_forward.w_2.weight"] = (dim, hidden)
        layout[f"{layer}feed_forward.w_2.bias"] = (dim,)
        for norm in ("norm_ff", "norm_mha"):
            layout[f"{layer}{norm}.weight"] = (dim,)
            layout[f"{layer}{norm}.bias"] = (dim,)
    return layout


def _random_encoder(dtype=torch.float32, **config) -> LyricConformer:
    """Every parameter random (layer norms included), so no term of the computation hides behind a 0 or 1."""
    torch.manual_seed(0)
    encoder = LyricConformer(**{**TINY, **config}).eval()
    with torch.no_grad():
        for name, parameter in encoder.named_parameters():
            offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            parameter.copy_(torch.randn_like(parameter) * 0.3 + offset)
    return encoder.to(dtype)


def _padding_mask(lengths: list[int], length: int) -> torch.Tensor:
    return (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()


def _reference(encoder: LyricConformer, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The encoder written from its definition, one query/key pair at a time.

    score(i, j) = ((q_i + u) . k_j + (q_i + v) . p_(i-j)) / sqrt(d_head), with p_r the projected
    sinusoid of the signed distance r = i - j (sin on even channels, cos on odd); padded keys
    get no weight, and a query with no valid key attends to nothing.
    """
    weights = encoder.state_dict()
    dim, heads = encoder.output_size, weights["encoders.0.self_attn.pos_bias_u"].shape[0]
    head_dim = dim // heads
    batch, length, _ = embeddings.shape

    def linear(x, name):
        return F.linear(x, weights[f"{name}.weight"], weights.get(f"{name}.bias"))

    def norm(x, name):
        return F.layer_norm(x, (dim,), weights[f"{name}.weight"], weights[f"{name}.bias"], eps=1e-5)

    def split(x):
        return x.view(*x.shape[:-1], heads, head_dim)

    frequencies = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)

    def sinusoid(distance):
        angles = distance * frequencies
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten().to(embeddings.dtype)

    valid = mask.bool()
    x = norm(linear(embeddings, "embed.out.0"), "embed.out.1") * math.sqrt(dim)
    for index in range(len(encoder.encoders)):
        prefix = f"encoders.{index}."
        attention = f"{prefix}self_attn"
        h = norm(x, f"{prefix}norm_mha")
        q, k, v = (split(linear(h, f"{attention}.{p}")) for p in ("linear_q", "linear_k", "linear_v"))
        u, w = weights[f"{attention}.pos_bias_u"], weights[f"{attention}.pos_bias_v"]
        scores = torch.empty(batch, heads, length, length, dtype=x.dtype)
        for i in range(length):
            for j in range(length):
                position = split(F.linear(sinusoid(i - j), weights[f"{attention}.linear_pos.weight"]))
                content_term = ((q[:, i] + u) * k[:, j]).sum(-1)
                position_term = ((q[:, i] + w) * position).sum(-1)
                scores[:, :, i, j] = (content_term + position_term) / math.sqrt(head_dim)
        keys = valid[:, None, None, :]
        probabilities = torch.where(keys, scores, -torch.inf).softmax(-1).nan_to_num(0.0)
        attended = torch.einsum("bhij,bjhd->bihd", probabilities, v).reshape(batch, length, dim)
        x = x + linear(attended, f"{attention}.linear_out")
        h = norm(x, f"{prefix}norm_ff")
        x = x + linear(F.silu(linear(h, f"{prefix}feed_forward.w_1")), f"{prefix}feed_forward.w_2")
    return norm(x, "after_norm")


def test_default_config_has_the_official_checkpoint_layout():
    with torch.device("meta"):
        encoder = LyricConformer()
    built = {name: tuple(tensor.shape) for name, tensor in encoder.state_dict().items()}
    assert built == _official_layout()
    assert encoder.output_size == 1024


def test_encoder_computes_relative_position_attention_as_defined():
    encoder = _random_encoder(torch.float64)
    mask = _padding_mask([5, 3, 1], 5)
    embeddings = torch.randn(3, 5, TINY["input_size"], dtype=torch.float64)
    with torch.no_grad():
        hidden, returned_mask = encoder(embeddings, mask)
    # float64 throughout except the model's sinusoid table, which is float32 like the official one
    torch.testing.assert_close(hidden, _reference(encoder, embeddings, mask), rtol=0, atol=1e-6)
    assert returned_mask.dtype == torch.bool
    assert torch.equal(returned_mask, mask.bool().unsqueeze(1))


def test_row_output_does_not_depend_on_batch_padding():
    encoder = _random_encoder()
    short = torch.randn(1, 4, TINY["input_size"])
    long = torch.randn(1, 9, TINY["input_size"])
    garbage = torch.randn(1, 5, TINY["input_size"]) * 100
    batch = torch.cat([long, torch.cat([short, garbage], dim=1)])
    with torch.no_grad():
        alone, _ = encoder(short, torch.ones(1, 4, dtype=torch.long))
        batched, _ = encoder(batch, _padding_mask([9, 4], 9))
    torch.testing.assert_close(batched[1, :4], alone[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch_lengths", [[0], [0, 6]])
def test_empty_lyrics_give_finite_output(batch_lengths):
    encoder = _random_encoder()
    length = max(max(batch_lengths), 1)
    embeddings = torch.randn(len(batch_lengths), length, TINY["input_size"])
    with torch.no_grad():
        hidden, returned_mask = encoder(embeddings, _padding_mask(batch_lengths, length))
    assert hidden.shape == (len(batch_lengths), length, TINY["output_size"])
    assert torch.isfinite(hidden).all()
    assert not returned_mask[0].any()


def test_bool_and_int_masks_are_equivalent():
    encoder = _random_encoder()
    embeddings = torch.randn(2, 6, TINY["input_size"])
    mask = _padding_mask([6, 2], 6)
    with torch.no_grad():
        from_int, _ = encoder(embeddings, mask.int())
        from_bool, _ = encoder(embeddings, mask.bool())
    assert torch.equal(from_int, from_bool)


def test_erg_query_hook_scales_the_query_projection_before_position_biases():
    embeddings = torch.randn(2, 7, TINY["input_size"])
    mask = _padding_mask([7, 5], 7)
    tau = 0.01

    hooked = _random_encoder()
    with torch.no_grad():
        plain, _ = hooked(embeddings, mask)

    def scale_queries(module, inputs, output):
        output[:] *= tau
        return output

    handles = [hooked.encoders[i].self_attn.linear_q.register_forward_hook(scale_queries) for i in ERG_LAYERS]
    with torch.no_grad():
        rectified, _ = hooked(embeddings, mask)
    for handle in handles:
        handle.remove()

    scaled_weights = _random_encoder()
    with torch.no_grad():
        for i in ERG_LAYERS:
            scaled_weights.encoders[i].self_attn.linear_q.weight.mul_(tau)
            scaled_weights.encoders[i].self_attn.linear_q.bias.mul_(tau)
        expected, _ = scaled_weights(embeddings, mask)

    torch.testing.assert_close(rectified, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(rectified, plain, atol=1e-3)


def test_bfloat16_stays_close_to_float32():
    embeddings = torch.randn(2, 6, TINY["input_size"])
    mask = _padding_mask([6, 3], 6)
    with torch.no_grad():
        reference, _ = _random_encoder()(embeddings, mask)
        reduced, _ = _random_encoder(torch.bfloat16)(embeddings.bfloat16(), mask)
    valid = mask.bool()
    assert reduced.dtype == torch.bfloat16
    torch.testing.assert_close(reduced.float()[valid], reference[valid], rtol=0.05, atol=0.1)


def test_rejects_a_mask_that_does_not_match_the_embeddings():
    encoder = _random_encoder()
    with pytest.raises(ValueError, match="mask"):
        encoder(torch.randn(2, 6, TINY["input_size"]), torch.ones(2, 5))
