"""Train a small MobileNetV2 on scikit-learn's 8x8 digits and export it to ONNX as a real MobileNetV2 is.

The model (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks") keeps what
makes MobileNetV2 hard to quantize per tensor: depthwise 3x3 convolutions followed by BatchNorm,
ReLU6 activations, linear bottlenecks and residual Adds. The ONNX file keeps BatchNormalization as
nodes (``TrainingMode.PRESERVE`` on the eval-mode model) and ReLU6 as ``Clip(0, 6)``, so the compiler
folds the BatchNorms itself and can record their statistics first (data-free bias correction and
high-bias absorption need them).

Data: ``sklearn.datasets.load_digits`` (1797 images, pixels / 16). The test split is the one the
realmodels kit evaluates on (``digits_test.npz``, rows ``index`` of ``load_digits``); the model trains
on every other row, so training and test never overlap. Deterministic: fixed seed, one thread,
deterministic algorithms.

Training: Adam, learning rate 0.01 with cosine decay, 150 epochs, +-1 pixel shifts, no weight decay
(MobileNet's authors advise little or none on depthwise filters). As in ImageNet MobileNetV2s, some
expansion channels die under ReLU6, the depthwise BatchNorms after them see almost no variance, and
folding them gives depthwise weights whose channel ranges differ by more than 500x: the reason per-tensor
weight quantization fails on MobileNetV2 (Nagel et al. 2019, section 3.1). (The same model trained with
learning rate 0.003 and weight decay 1e-4 has ranges within 5x, and per-tensor int8 loses nothing.)

torch and scikit-learn are benchmark-only dependencies (never dependencies of the package)::

    pip install torch==2.13.0 scikit-learn
    python benchmarks/train_digits_mobilenet.py [--test /root/realmodels/data/digits_test.npz] \
        [--out benchmarks/models/digits_mobilenetv2.onnx]
"""

from __future__ import annotations

import argparse
import json
import random
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from sklearn.datasets import load_digits

SEED = 0
HERE = Path(__file__).resolve().parent


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu6: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU6()] if relu6 else layers


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped for t=1) -> depthwise 3x3 -> linear 1x1 projection, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = conv_bn(cin, hidden, 1) if expand != 1 else []
        layers += conv_bn(hidden, hidden, 3, stride, groups=hidden) + conv_bn(hidden, cout, 1, relu6=False)
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class DigitsMobileNetV2(nn.Module):
    # (expansion t, output channels c, stride s) per block, as in the paper's Table 2, scaled to 8x8 inputs
    BLOCKS = ((1, 8, 1), (6, 16, 2), (6, 16, 1), (6, 24, 2), (6, 24, 1))

    def __init__(self, width: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = conv_bn(1, 16 * width, 3)
        channels = 16 * width
        for t, c, s in self.BLOCKS:
            layers.append(InvertedResidual(channels, c * width, s, t))
            channels = c * width
        layers += conv_bn(channels, 64, 1) + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, 10)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)  # no weight decay (see the module docstring)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            batch = order[start:start + 64]
            dx, dy = torch.randint(-1, 2, (2,), generator=generator).tolist()  # +-1 pixel shift
            inputs = torch.roll(x[batch], shifts=(dy, dx), dims=(2, 3))
            loss = loss_fn(model(inputs), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", default="/root/realmodels/data/digits_test.npz", help="the realmodels test split")
    parser.add_argument("--out", default=str(HERE / "models" / "digits_mobilenetv2.onnx"))
    parser.add_argument("--epochs", type=int, default=150)
    args = parser.parse_args()
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None]
    labels = digits.target.astype(np.int64)
    test = np.load(args.test)
    train_rows = np.setdiff1d(np.arange(len(labels)), test["index"])
    assert np.array_equal(images[test["index"]], test["x"]), "the test split is not load_digits()' rows"
    model = train(DigitsMobileNetV2(width=2), torch.from_numpy(images[train_rows]), torch.from_numpy(labels[train_rows]),
                  args.epochs)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(out), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          do_constant_folding=True, dynamo=False, training=torch.onnx.TrainingMode.PRESERVE)
        torch_top1 = float((model(torch.from_numpy(test["x"])).argmax(1).numpy() == test["y"]).mean())

    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    top1 = float((session.run(None, {"input": test["x"]})[0].argmax(1) == test["y"]).mean())
    print(json.dumps({"model": str(out), "train_images": int(len(train_rows)), "test_images": int(len(test["y"])),
                      "torch_top1": torch_top1, "onnx_fp32_top1": top1, "epochs": args.epochs, "seed": SEED}))


if __name__ == "__main__":
    main()
