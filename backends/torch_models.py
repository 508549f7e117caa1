"""ResNet-50 v1.5 and BERT-base from torch.nn building blocks, named as torchvision and Hugging Face name them.

No torchvision or transformers needed: the modules below are the same architectures (suite/models.py holds the one
definition: semantics, canonical names and shapes), so ``named_parameters()`` yields exactly the canonical names
and the canonical (logical) arrays load without conversion: torch's conv weights are OIHW and nn.Linear's (out, in),
the canonical layouts. BERT's attention core is ``F.scaled_dot_product_attention`` (no mask, no dropout), its GELU
the exact erf form (nn.GELU()). torch is imported inside ``classes``; the module classes are made once per process.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import numpy as np

from suite import models
from suite.models import Model


@functools.cache
def classes() -> SimpleNamespace:
    """The nn.Module classes of both networks (defined here so torch is imported only when a model is built)."""
    import torch
    from torch import nn
    from torch.nn import functional

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int):
            super().__init__()
            out = width * models.RESNET_EXPANSION
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width, eps=models.BN_EPS)
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)  # v1.5: stride here
            self.bn2 = nn.BatchNorm2d(width, eps=models.BN_EPS)
            self.conv3 = nn.Conv2d(width, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out, eps=models.BN_EPS)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = (nn.Sequential(nn.Conv2d(cin, out, 1, stride=stride, bias=False),
                                             nn.BatchNorm2d(out, eps=models.BN_EPS))
                               if stride != 1 or cin != out else None)

        def forward(self, x):
            shortcut = x if self.downsample is None else self.downsample(x)
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            return self.relu(self.bn3(self.conv3(y)) + shortcut)

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            stem = models.RESNET_STEM
            self.conv1 = nn.Conv2d(models.RESNET_CHANNELS, stem, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem, eps=models.BN_EPS)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            stages: dict[int, list[nn.Module]] = {}
            for stage, _, cin, width, stride in models._stage_blocks():
                stages.setdefault(stage, []).append(Bottleneck(cin, width, stride))
            for stage, blocks in stages.items():
                setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(models.RESNET_WIDTHS[-1] * models.RESNET_EXPANSION, models.RESNET_CLASSES)

        def forward(self, images):
            x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    hidden = models.BERT_HIDDEN

    class Embeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.word_embeddings = nn.Embedding(models.BERT_VOCAB, hidden)
            self.position_embeddings = nn.Embedding(models.BERT_POSITIONS, hidden)
            self.token_type_embeddings = nn.Embedding(models.BERT_TYPES, hidden)
            self.LayerNorm = nn.LayerNorm(hidden, eps=models.LN_EPS)

        def forward(self, tokens, segments):
            positions = torch.arange(tokens.shape[1], device=tokens.device)
            x = self.word_embeddings(tokens) + self.position_embeddings(positions) + \
                self.token_type_embeddings(segments)
            return self.LayerNorm(x)

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))

        def forward(self, x):
            batch, length, _ = x.shape

            def heads(t):
                return t.view(batch, length, models.BERT_HEADS, models.BERT_HEAD_DIM).transpose(1, 2)

            context = functional.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(x)),
                                                              heads(self.value(x)))
            return context.transpose(1, 2).reshape(batch, length, hidden)

    class DenseNorm(nn.Module):  # BertSelfOutput and BertOutput: dense, then LayerNorm of the residual sum
        def __init__(self, inp: int):
            super().__init__()
            self.dense = nn.Linear(inp, hidden)
            self.LayerNorm = nn.LayerNorm(hidden, eps=models.LN_EPS)

        def forward(self, h, residual):
            return self.LayerNorm(self.dense(h) + residual)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.self = SelfAttention()
            self.output = DenseNorm(hidden)

        def forward(self, x):
            return self.output(self.self(x), x)

    class Intermediate(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(hidden, models.BERT_FFN)
            self.act = nn.GELU()  # exact (erf)

        def forward(self, x):
            return self.act(self.dense(x))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = Attention()
            self.intermediate = Intermediate()
            self.output = DenseNorm(models.BERT_FFN)

        def forward(self, x):
            x = self.attention(x)
            return self.output(self.intermediate(x), x)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.ModuleList(Layer() for _ in range(models.BERT_LAYERS))

        def forward(self, x):
            for layer in self.layer:
                x = layer(x)
            return x

    class Pooler(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(hidden, hidden)

        def forward(self, x):
            return torch.tanh(self.dense(x[:, 0]))

    class Bert(nn.Module):  # BertForSequenceClassification without dropout
        def __init__(self):
            super().__init__()
            self.embeddings = Embeddings()
            self.encoder = Encoder()
            self.pooler = Pooler()
            self.classifier = nn.Linear(hidden, models.BERT_LABELS)

        def forward(self, tokens, segments):
            return self.classifier(self.pooler(self.encoder(self.embeddings(tokens, segments))))

    return SimpleNamespace(ResNet50=ResNet50, Bert=Bert)


def build(op: Model) -> Any:
    """The op's network as an nn.Module with torch's default initialization (on the current default device)."""
    found = classes()
    return found.ResNet50() if op.network == "resnet50" else found.Bert()


def load(module: Any, op: Model, arrays: dict[str, np.ndarray]) -> None:
    """Copy the canonical parameters and batch-norm buffers into ``module`` (same names, same layouts); refuses a
    module whose names differ from the canonical ones."""
    import torch

    params = dict(module.named_parameters())
    buffers = {name: b for name, b in module.named_buffers() if not name.endswith("num_batches_tracked")}
    if list(params) != list(op.parameters()) or set(buffers) != set(op.buffers()):
        missing = set(op.parameters()) ^ set(params) | set(op.buffers()) ^ set(buffers)
        raise RuntimeError(f"torch {op.network} names differ from the canonical ones: {sorted(missing)[:5]}")
    with torch.no_grad():
        for name, tensor in {**params, **buffers}.items():
            tensor.copy_(torch.from_numpy(arrays[name]))
