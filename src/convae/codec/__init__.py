"""The ``.cae`` codec: quantize a trained model's latent code, entropy-code it, pack it in a file.

How an image becomes bytes (see docs/format.md for the byte layout)::

    uint8 [N, C, H, W] --/255--> encoder --> y [N, L] float32
    q = round((y - offset) / step)          per-channel offset, one step per quality level
    q clipped to each channel's table range, range-coded with per-channel categorical tables
    header + payload + CRC-32  ->  one .cae file for all N images

Decoding inverts it: ``y_hat = q * step + offset`` -> decoder -> round to uint8.

The model the codec uses is the run's autoencoder after a short rate-distortion fine-tune
(:func:`fit_codec`): uniform noise stands in for rounding, and a learned per-channel density (a
mixture of logistics) gives a differentiable bit count, so the loss is ``MSE + lambda * bpp``.
That fine-tuned model, the quantizer and the probability tables (histograms of the training
split's codes) are saved in ``RUN/codec.safetensors`` (+ a readable ``codec.json``). Each file
names its model by a 16-byte fingerprint of those weights and its tables by an 8-byte hash, so
decoding with anything else fails with one clear line instead of producing garbage.

One module per job:

- ``format``: the container - :class:`Header`, :func:`pack`, :func:`unpack`, :func:`verify`
- ``entropy``: :class:`Level` (transform, quantizer, tables) and the payload coders
- ``fit``: the rate-distortion fine-tune, :func:`fit_codec`
- ``core``: :class:`Codec`, and images <-> bytes (:func:`encode`, :func:`decode`)
- ``store``: :func:`save_codec` / :func:`load_codec` (fitted once when missing)
- ``bench``: the rate-distortion benchmark against PNG / WebP / JPEG

The learned photo codec (a ``hyperprior`` run, :mod:`convae.models.hyperprior`) writes version-2
files, one whole photo of any size each:

- ``tables``: 16-bit integer probability tables; ``rangecode``: the range coder over them
- ``format2``: the version-2 container; ``photo``: :class:`PhotoCodec`, photo <-> bytes
- ``photo_store``: the run's tables file (built once); ``photo_io``: files <-> files
- ``photo_bench``: rate-distortion on whole photos against JPEG / WebP / AVIF
"""

# `X as X`: importable from convae.codec as before, but not in __all__
from .bench import BASELINES as BASELINES
from .bench import baseline_rd, bytes_at_psnr, codec_rd, rd_figure, rd_markdown
from .core import Codec, check_header, decode, dequantize, encode, quantize
from .entropy import Level, decode_symbols, encode_symbols
from .fit import CodecFitConfig, LogisticMixturePrior, fit_codec, principal_axes
from .fit import Progress as Progress
from .format import (
    CODERS,
    FORMAT_VERSION,
    MAGIC,
    CodecError,
    Header,
    pack,
    read_header,
    unpack,
    verify,
)
from .format import MAX_IMAGES as MAX_IMAGES
from .photo import PhotoCodec, decode_photo, encode_photo
from .photo_store import load_photo_codec
from .store import CODEC_FILE as CODEC_FILE
from .store import CODEC_JSON as CODEC_JSON
from .store import load_codec, save_codec

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "CODERS",
    "CodecError",
    "Header",
    "Level",
    "Codec",
    "CodecFitConfig",
    "pack",
    "unpack",
    "verify",
    "read_header",
    "encode_symbols",
    "decode_symbols",
    "fit_codec",
    "save_codec",
    "load_codec",
    "encode",
    "decode",
    "codec_rd",
    "baseline_rd",
    "bytes_at_psnr",
    "rd_figure",
    "rd_markdown",
    "quantize",
    "dequantize",
    "check_header",
    "LogisticMixturePrior",
    "principal_axes",
    "PhotoCodec",
    "encode_photo",
    "decode_photo",
    "load_photo_codec",
]
