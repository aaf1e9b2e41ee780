"""Temporally augmented U-Net: a 2-D U-Net over each frame's Tucker core, mixed across frames.

For a core sequence `(T, R1, R2, R3)` the first rank is the channel axis and `(R2, R3)` the
image; for `(T, R1, R2)` the image is `(R1, R2)` with one channel. Every frame goes through
the same EDM/DDPM++-style U-Net (GroupNorm + SiLU + 3x3 convolutions, skip connections,
optional self-attention at the bottleneck), conditioned on the noise level and on the frame's
own continuous time stamp. After every residual block a residual 1-D convolution along the
frame axis lets information flow between frames; its output layer starts at zero so each
block starts as the identity in time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray

from ..errors import bad_input

_SKIP_SCALE = 1.0 / math.sqrt(2.0)  # keeps the variance of residual sums near that of the parts


def _groups(channels: int) -> int:
    # EDM uses about 4 channels per group, at most 32 groups; the count must divide `channels`.
    g = max(1, min(32, channels // 4))
    while channels % g:
        g -= 1
    return g


def _zero(layer):
    """The same layer with all its weights and biases set to zero."""
    return jax.tree_util.tree_map(lambda a: jnp.zeros_like(a) if eqx.is_inexact_array(a) else a, layer)


def _conv(layer: eqx.nn.Conv, x: Float[Array, "C *S"]) -> Float[Array, "D *S"]:
    """`layer(x)`, computed with the channels last.

    XLA's CPU backend runs channels-first convolutions inside a loop (the samplers' `lax.scan`
    over steps) several times slower than the same convolution outside one (jax-ml/jax#12868;
    7x on the fluid2d U-Net, measured); the channels-last form is not affected. Same parameters
    and the same result to float32 rounding as Equinox's own call."""
    if layer.padding_mode != "ZEROS":
        return layer(x)
    sp = "HWD"[: layer.num_spatial_dims]
    weight = jnp.moveaxis(layer.weight, (0, 1), (-1, -2))  # (O, I, *K) -> (*K, I, O)
    y = lax.conv_general_dilated(
        jnp.moveaxis(x, 0, -1)[None], weight, window_strides=layer.stride, padding=layer.padding,
        rhs_dilation=layer.dilation, feature_group_count=layer.groups,
        dimension_numbers=("N" + sp + "C", sp + "IO", "N" + sp + "C"),
    )
    y = jnp.moveaxis(y[0], -1, 0)
    return y + layer.bias if layer.use_bias else y


def _frames_image(core_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(core_shape) == 3:
        return core_shape
    return (1, core_shape[0], core_shape[1])


class _TemporalMix(eqx.Module):
    """Residual 1-D convolution along the frames: channels -> hidden -> channels, kernel 3."""

    conv_in: eqx.nn.Conv1d
    conv_out: eqx.nn.Conv1d

    def __init__(self, channels: int, hidden: int, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.conv_in = eqx.nn.Conv1d(channels, hidden, 3, padding="SAME", key=k1)
        self.conv_out = _zero(eqx.nn.Conv1d(hidden, channels, 3, padding="SAME", key=k2))

    def __call__(self, x: Float[Array, "T C H W"]) -> Float[Array, "T C H W"]:
        t, c, h, w = x.shape
        # every pixel is its own (C, T) sequence; the same convolution runs over all of them
        seq = jnp.transpose(x, (2, 3, 1, 0)).reshape(h * w, c, t)
        out = jax.vmap(lambda s: _conv(self.conv_out, jax.nn.silu(_conv(self.conv_in, s))))(seq)
        out = jnp.transpose(out.reshape(h, w, c, t), (3, 2, 0, 1))
        return x + out


class _ResBlock(eqx.Module):
    """GroupNorm-SiLU-conv twice, with scale/shift from the per-frame embedding, then time mixing."""

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    emb: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None
    mix: _TemporalMix

    def __init__(self, c_in: int, c_out: int, emb_dim: int, hidden: int, *, key: PRNGKeyArray):
        k = jax.random.split(key, 5)
        self.norm1 = eqx.nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = eqx.nn.Conv2d(c_in, c_out, 3, padding=1, key=k[0])
        self.emb = eqx.nn.Linear(emb_dim, 2 * c_out, key=k[1])
        self.norm2 = eqx.nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = eqx.nn.Conv2d(c_out, c_out, 3, padding=1, key=k[2])
        self.skip = None if c_in == c_out else eqx.nn.Conv2d(c_in, c_out, 1, key=k[3])
        self.mix = _TemporalMix(c_out, hidden, key=k[4])

    def _frame(self, x: Float[Array, "C H W"], e: Float[Array, " E"]) -> Float[Array, "D H W"]:
        h = _conv(self.conv1, jax.nn.silu(self.norm1(x)))
        scale, shift = jnp.split(self.emb(e), 2)
        h = self.norm2(h) * (1.0 + scale[:, None, None]) + shift[:, None, None]
        h = _conv(self.conv2, jax.nn.silu(h))
        s = x if self.skip is None else _conv(self.skip, x)
        return (h + s) * _SKIP_SCALE

    def __call__(self, x: Float[Array, "T C H W"], emb: Float[Array, "T E"]) -> Float[Array, "T D H W"]:
        return self.mix(jax.vmap(self._frame)(x, emb))


class _Attention(eqx.Module):
    """Self-attention over the pixels of each frame (bottleneck only), residual, zero-initialised."""

    norm: eqx.nn.GroupNorm
    attn: eqx.nn.MultiheadAttention

    def __init__(self, channels: int, heads: int, *, key: PRNGKeyArray):
        self.norm = eqx.nn.GroupNorm(_groups(channels), channels)
        attn = eqx.nn.MultiheadAttention(heads, channels, use_output_bias=True, key=key)
        self.attn = eqx.tree_at(lambda a: a.output_proj, attn, _zero(attn.output_proj))

    def _frame(self, x: Float[Array, "C H W"]) -> Float[Array, "C H W"]:
        c, h, w = x.shape
        tokens = self.norm(x).reshape(c, h * w).T
        out = self.attn(tokens, tokens, tokens)
        return (x + out.T.reshape(c, h, w)) * _SKIP_SCALE

    def __call__(self, x: Float[Array, "T C H W"]) -> Float[Array, "T C H W"]:
        return jax.vmap(self._frame)(x)


def _downsample(x: Float[Array, "C H W"]) -> Float[Array, "C h w"]:
    # odd sizes are padded by repeating the last row/column, so no pixel is dropped
    c, h, w = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
    return x.reshape(c, x.shape[1] // 2, 2, x.shape[2] // 2, 2).mean(axis=(2, 4))


class _Upsample(eqx.Module):
    conv: eqx.nn.Conv2d

    def __init__(self, channels: int, *, key: PRNGKeyArray):
        self.conv = eqx.nn.Conv2d(channels, channels, 3, padding=1, key=key)

    def __call__(self, x: Float[Array, "C h w"], size: tuple[int, int]) -> Float[Array, "C H W"]:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)[:, : size[0], : size[1]]
        return _conv(self.conv, x)


def _layers(c_img, widths, downsample, emb_dim, time_features, num_blocks, temporal_mult, attention, heads, key):
    """All layers of the U-Net, as a dict (call under `eqx.filter_eval_shape`)."""
    keys = iter(jax.random.split(key, 8 + 4 * len(widths) * (num_blocks + 1)))

    def block(ci, co):
        return _ResBlock(ci, co, emb_dim, temporal_mult * co, key=next(keys))

    out = {
        "emb_in": eqx.nn.Linear(emb_dim + 2 * time_features, emb_dim, key=next(keys)),
        "emb_out": eqx.nn.Linear(emb_dim, emb_dim, key=next(keys)),
        "conv_in": eqx.nn.Conv2d(c_img, widths[0], 3, padding=1, key=next(keys)),
    }
    enc, prev = [], widths[0]
    for width in widths:
        enc.append(tuple(block(prev if i == 0 else width, width) for i in range(num_blocks)))
        prev = width
    out["enc"] = tuple(enc)
    out["mid"] = (block(prev, prev), block(prev, prev))
    out["mid_attn"] = _Attention(prev, heads, key=next(keys)) if attention else None
    dec, ups = [], []
    for level in reversed(range(len(widths))):
        width = widths[level]
        ups.append(_Upsample(prev, key=next(keys)) if level < len(widths) - 1 and downsample[level] else None)
        dec.append(tuple(block(prev + width if i == 0 else width, width) for i in range(num_blocks)))
        prev = width
    out["ups"], out["dec"] = tuple(ups), tuple(dec)
    out["norm_out"] = eqx.nn.GroupNorm(_groups(widths[0]), widths[0])
    out["conv_out"] = eqx.nn.Conv2d(widths[0], c_img, 3, padding=1, key=next(keys))
    return out


def _find(tree, kind):
    return [x for x in jax.tree_util.tree_leaves(tree, is_leaf=lambda n: isinstance(n, kind)) if isinstance(x, kind)]


@eqx.filter_jit
def _initialise(skeleton, key):
    """Fill a shape-only layer tree: Linear/Conv weights and biases ~ U(±1/sqrt(fan_in)) (Equinox's
    default), GroupNorm scale 1 and shift 0; then zero the layers that must start at zero (the
    time mixing's output, the attention output, the final convolution)."""
    linear = _find(skeleton, (eqx.nn.Linear, eqx.nn.Conv))
    norms = _find(skeleton, eqx.nn.GroupNorm)
    total = sum(math.prod(l.weight.shape) + (math.prod(l.bias.shape) if l.bias is not None else 0) for l in linear)
    u = jax.random.uniform(key, (total,), jnp.float32, -1.0, 1.0)
    filled, offset = [], 0
    for layer in linear:
        lim = 1.0 / math.sqrt(math.prod(layer.weight.shape[1:]))
        parts = {}
        for name in ("weight", "bias"):
            leaf = getattr(layer, name)
            if leaf is None:
                continue
            n = math.prod(leaf.shape)
            parts[name] = lim * u[offset : offset + n].reshape(leaf.shape)
            offset += n
        filled.append(eqx.tree_at(lambda l: [getattr(l, k) for k in parts], layer, list(parts.values()),
                                  is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)))
    tree = eqx.tree_at(lambda t: _find(t, (eqx.nn.Linear, eqx.nn.Conv)), skeleton, filled)
    tree = eqx.tree_at(
        lambda t: _find(t, eqx.nn.GroupNorm), tree,
        [eqx.tree_at(lambda g: (g.weight, g.bias), g, (jnp.ones(g.weight.shape), jnp.zeros(g.bias.shape)),
                     is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)) for g in norms],
    )
    zero_at = (lambda t: [m.conv_out for m in _find(t, _TemporalMix)]
               + [a.attn.output_proj for a in _find(t, _Attention)] + [t["conv_out"]])
    # zero output layer: the untrained net returns 0, so D(x; σ) starts as c_skip(σ) x
    return eqx.tree_at(zero_at, tree, replace_fn=_zero)


def _positional(c: Float[Array, ""], dim: int) -> Float[Array, " dim"]:
    half = dim // 2
    freqs = (1.0 / 10_000.0) ** (jnp.arange(half, dtype=jnp.float32) / half)
    angle = c * freqs
    return jnp.concatenate([jnp.cos(angle), jnp.sin(angle)])


def _fourier_time(t: Float[Array, ""], num: int) -> Float[Array, " F"]:
    # fixed geometric frequencies: from half a period to ~32 periods over the normalised range,
    # enough to tell apart frames ~1/100 apart without making the net jumpy between them
    freqs = 2.0 * jnp.pi * jnp.geomspace(0.5, 32.0, num).astype(jnp.float32)
    angle = t * freqs
    return jnp.concatenate([jnp.cos(angle), jnp.sin(angle)])


class TemporalUNet(eqx.Module):
    """Temporally augmented 2-D U-Net over core sequences (the GPSD denoiser network `F`).

    **Arguments:**

    - `core_shape`: the Tucker core of one frame, `(R1, R2)` or `(R1, R2, R3)`.
    - `channels`: width of the first level.
    - `channel_mult`: width multiplier of each level (its length is the number of levels).
    - `num_blocks`: residual blocks per level (encoder and decoder each).
    - `temporal_mult`: hidden width of the time convolutions, as a multiple of the block width.
    - `attention`: self-attention at the bottleneck.
    - `attention_heads`: number of heads (must divide the bottleneck width).
    - `emb_dim`: width of the noise/time embedding (default `4 * channels`).
    - `time_features`: number of Fourier frequencies of the time-stamp embedding.
    - `key`: a typed PRNG key for the initial weights.

    Resolution halves between levels only while both image sides are at least 4, so small or
    odd cores (for example 5x3) never shrink below 2x2; odd sides are edge-padded.
    """

    core_shape: tuple[int, ...] = eqx.field(static=True)
    channels: int = eqx.field(static=True)
    channel_mult: tuple[int, ...] = eqx.field(static=True)
    num_blocks: int = eqx.field(static=True)
    temporal_mult: int = eqx.field(static=True)
    attention: bool = eqx.field(static=True)
    attention_heads: int = eqx.field(static=True)
    emb_dim: int = eqx.field(static=True)
    time_features: int = eqx.field(static=True)
    downsample: tuple[bool, ...] = eqx.field(static=True)

    emb_in: eqx.nn.Linear
    emb_out: eqx.nn.Linear
    conv_in: eqx.nn.Conv2d
    enc: tuple[tuple[_ResBlock, ...], ...]
    mid: tuple[_ResBlock, _ResBlock]
    mid_attn: _Attention | None
    ups: tuple[_Upsample | None, ...]
    dec: tuple[tuple[_ResBlock, ...], ...]
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d

    def __init__(
        self,
        core_shape: Sequence[int],
        *,
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_blocks: int = 1,
        temporal_mult: int = 2,
        attention: bool = True,
        attention_heads: int = 1,
        emb_dim: int | None = None,
        time_features: int = 16,
        key: PRNGKeyArray,
    ):
        core_shape = tuple(int(r) for r in core_shape)
        if len(core_shape) not in (2, 3) or min(core_shape) < 1:
            raise bad_input("core_shape", "(R1, R2) or (R1, R2, R3) with positive ranks", core_shape)
        channel_mult = tuple(int(m) for m in channel_mult)
        if not channel_mult or min(channel_mult) < 1:
            raise bad_input("channel_mult", "a non-empty sequence of positive integers", channel_mult)
        for name, value in (("channels", channels), ("num_blocks", num_blocks), ("temporal_mult", temporal_mult),
                            ("time_features", time_features), ("attention_heads", attention_heads)):
            if int(value) != value or value < 1:
                raise bad_input(name, "a positive integer", value)
        emb_dim = 4 * channels if emb_dim is None else int(emb_dim)
        if emb_dim < 2 or emb_dim % 2:
            raise bad_input("emb_dim", "an even integer >= 2", emb_dim)
        widths = [channels * m for m in channel_mult]
        if attention and widths[-1] % attention_heads:
            raise bad_input("attention_heads", f"a divisor of the bottleneck width {widths[-1]}", attention_heads)

        self.core_shape = core_shape
        self.channels, self.channel_mult, self.num_blocks = int(channels), channel_mult, int(num_blocks)
        self.temporal_mult, self.attention, self.attention_heads = int(temporal_mult), bool(attention), int(attention_heads)
        self.emb_dim, self.time_features = emb_dim, int(time_features)

        c_img, h, w = _frames_image(core_shape)
        down = []
        for level in range(len(widths) - 1):
            go = min(h, w) >= 4
            down.append(go)
            if go:
                h, w = (h + 1) // 2, (w + 1) // 2
        self.downsample = tuple(down)

        # Built shape-only, then filled from one random draw: building eagerly layer by layer
        # compiles one small random kernel per distinct weight shape (tens of seconds on CPU).
        skeleton = eqx.filter_eval_shape(
            lambda k: _layers(c_img, widths, self.downsample, emb_dim, self.time_features, self.num_blocks,
                              self.temporal_mult, self.attention, self.attention_heads, k),
            jax.random.key(0),
        )
        layers = _initialise(skeleton, key)
        self.emb_in, self.emb_out, self.conv_in = layers["emb_in"], layers["emb_out"], layers["conv_in"]
        self.enc, self.mid, self.mid_attn = layers["enc"], layers["mid"], layers["mid_attn"]
        self.ups, self.dec = layers["ups"], layers["dec"]
        self.norm_out, self.conv_out = layers["norm_out"], layers["conv_out"]

    def hyperparameters(self) -> dict:
        """The constructor arguments (without `key`), JSON-ready, to rebuild the same network."""
        return {
            "core_shape": list(self.core_shape),
            "channels": self.channels,
            "channel_mult": list(self.channel_mult),
            "num_blocks": self.num_blocks,
            "temporal_mult": self.temporal_mult,
            "attention": self.attention,
            "attention_heads": self.attention_heads,
            "emb_dim": self.emb_dim,
            "time_features": self.time_features,
        }

    def _embed(self, c_noise: Float[Array, ""], t: Float[Array, " T"]) -> Float[Array, "T E"]:
        noise = _positional(c_noise, self.emb_dim)
        time = jax.vmap(lambda s: _fourier_time(s, self.time_features))(t)
        merged = jnp.concatenate([jnp.broadcast_to(noise, (t.shape[0], self.emb_dim)), time], axis=1)
        return jax.vmap(lambda e: jax.nn.silu(self.emb_out(jax.nn.silu(self.emb_in(e)))))(merged)

    def __call__(
        self, x: Float[Array, "T *core"], c_noise: Float[Array, ""] | float, t: Float[Array, " T"]
    ) -> Float[Array, "T *core"]:
        """Apply the network to one core sequence.

        **Arguments:**

        - `x`: core sequence, shape `(T, R1, .., RK)` (preconditioned input `c_in x`).
        - `c_noise`: scalar noise-level input (`ln(σ)/4` in EDM).
        - `t`: normalised time stamps of the frames, shape `(T,)`; any length, any spacing.

        **Returns:**

        An array of the shape of `x`.
        """
        if x.ndim != len(self.core_shape) + 1 or tuple(x.shape[1:]) != self.core_shape:
            raise bad_input("x", f"a core sequence of shape (T, {', '.join(map(str, self.core_shape))})", x.shape)
        if jnp.ndim(t) != 1 or t.shape[0] != x.shape[0]:
            raise bad_input("t", f"one time stamp per frame, shape ({x.shape[0]},)", jnp.shape(t))
        if jnp.ndim(c_noise) != 0:
            raise bad_input("c_noise", "a scalar", jnp.shape(c_noise))
        T = x.shape[0]
        h = x.reshape(T, *_frames_image(self.core_shape)).astype(jnp.float32)
        emb = self._embed(jnp.asarray(c_noise, jnp.float32), t.astype(jnp.float32))
        h = jax.vmap(lambda f: _conv(self.conv_in, f))(h)

        skips = []
        for level, blocks in enumerate(self.enc):
            for blk in blocks:
                h = blk(h, emb)
            skips.append(h)
            if level < len(self.enc) - 1 and self.downsample[level]:
                h = jax.vmap(_downsample)(h)

        h = self.mid[0](h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid[1](h, emb)

        for up, blocks, skip in zip(self.ups, self.dec, reversed(skips)):
            if up is not None:
                size = skip.shape[2:]
                h = jax.vmap(lambda f: up(f, size))(h)
            h = jnp.concatenate([h, skip], axis=1)
            for blk in blocks:
                h = blk(h, emb)

        h = jax.vmap(lambda f: _conv(self.conv_out, jax.nn.silu(self.norm_out(f))))(h)
        return h.reshape(x.shape)


def count_parameters(model: eqx.Module) -> int:
    """Number of trainable scalars (inexact array leaves) in `model`; also works on the
    shape-only skeleton from `eqx.filter_eval_shape`."""

    def inexact(a) -> bool:
        return isinstance(a, (jax.Array, jax.ShapeDtypeStruct)) and jnp.issubdtype(a.dtype, jnp.inexact)

    return int(sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(model) if inexact(a)))
