"""The float64 reference of whole models: each layer's backward against central finite differences, then both
networks' loss, gradient and update norms and logits against torch float64 autograd of a model built here from
torch.nn blocks with the same canonical weights."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from suite import model_reference as mr
from suite import models
from suite import reference as ref
from suite.ops import Gemm
from tests.gradients import numeric_gradient

RNG = np.random.default_rng(20)


def dense_embedding(ids: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, Callable]:
    """The embedding with its backward returning the whole table's gradient (zero rows included)."""
    y, back = mr.embedding(ids, table)

    def backward(dy: np.ndarray) -> tuple[np.ndarray]:
        rows, used = back(dy)
        dtable = np.zeros_like(table)
        dtable[used] = rows
        return (dtable,)
    return y, backward


# name -> (the layer on named float64 arrays, their shapes in the order its backward returns their gradients)
LAYERS: dict[str, tuple[Callable[[dict[str, np.ndarray]], tuple[np.ndarray, Callable]], dict[str, tuple]]] = {
    "conv 3×3/2 pad 1": (lambda a: mr.conv2d(a["x"], a["w"], 2, 1), {"x": (2, 3, 5, 5), "w": (4, 3, 3, 3)}),
    "conv 1×1": (lambda a: mr.conv2d(a["x"], a["w"], 1, 0), {"x": (1, 4, 3, 3), "w": (2, 4, 1, 1)}),
    "batch norm, training": (lambda a: mr.batch_norm(a["x"], a["gamma"], a["beta"], None, None, True, 1e-5),
                             {"x": (3, 2, 2, 3), "gamma": (2,), "beta": (2,)}),
    "batch norm, eval": (lambda a: mr.batch_norm(a["x"], a["gamma"], a["beta"], np.array([0.3, -0.2]),
                                                 np.array([0.5, 2.0]), False, 1e-5),
                         {"x": (2, 2, 3, 3), "gamma": (2,), "beta": (2,)}),
    "relu": (lambda a: mr.relu(a["x"]), {"x": (2, 3, 4)}),
    "max pool 3×3/2 pad 1": (lambda a: mr.max_pool(a["x"]), {"x": (2, 2, 7, 6)}),
    "global average pool": (lambda a: mr.global_average_pool(a["x"]), {"x": (2, 3, 4, 5)}),
    "dense": (lambda a: mr.dense(a["x"], a["w"], a["b"]), {"x": (2, 3, 4), "w": (5, 4), "b": (5,)}),
    "embedding": (lambda a: dense_embedding(np.array([[1, 3, 1], [0, 1, 3]]), a["table"]), {"table": (5, 3)}),
    "layer norm": (lambda a: mr.layer_norm(a["x"], a["gamma"], a["beta"], 1e-12),
                   {"x": (2, 3, 5), "gamma": (5,), "beta": (5,)}),
    "gelu": (lambda a: mr.gelu(a["x"]), {"x": (3, 4)}),
    "tanh": (lambda a: mr.tanh(a["x"]), {"x": (3, 4)}),
    "attention": (lambda a: mr.attention(a["q"], a["k"], a["v"]),
                  {"q": (1, 2, 3, 4), "k": (1, 2, 3, 4), "v": (1, 2, 3, 4)}),
}


@pytest.mark.parametrize("name", LAYERS)
def test_layer_backward_matches_finite_differences(name):
    """backward(dy) is the gradient of <dy, layer(inputs)> with respect to every input, by central differences."""
    layer, shapes = LAYERS[name]
    arrays = {key: RNG.standard_normal(shape) for key, shape in shapes.items()}
    y, backward = layer(arrays)
    dy = RNG.standard_normal(y.shape)
    grads = backward(dy)
    assert len(grads) == len(shapes)
    for key, grad in zip(shapes, grads, strict=True):
        numeric = numeric_gradient(lambda a: float(np.vdot(dy, layer(a)[0])), arrays, key)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8, err_msg=f"{name}: d/d{key}")


def test_max_pool_routes_to_the_maximum_and_sums_overlaps():
    """A maximum shared by two overlapping windows gets both gradients; padding never wins (inputs all negative)."""
    x = -np.ones((1, 1, 5, 5))
    x[0, 0, 1, 1] = -0.5  # in four of the nine 3×3/2 windows (rows and columns -1..1 and 1..3)
    y, backward = mr.max_pool(x)
    assert y.shape == (1, 1, 3, 3) and (y <= -0.5).all()
    (dx,) = backward(np.ones_like(y))
    assert dx[0, 0, 1, 1] == 4 and dx.sum() == 9


def test_the_norm_of_a_product_from_its_gram_matrices():
    a, b = RNG.standard_normal((2, 3, 7)), RNG.standard_normal((2, 3, 5))
    explicit = np.linalg.norm(a.reshape(6, 7).T @ b.reshape(6, 5)) ** 2
    assert mr.product_squared_norm(a, b) == pytest.approx(explicit, rel=1e-13)


@pytest.mark.parametrize("rows", [2, 9])
def test_a_dense_layer_s_gradient_norms_either_way(rows):
    """With fewer rows than in·out / (in + out) = 2.9 the Gram path, else the formed gradient: the same norms."""
    w, b, x, dy = (RNG.standard_normal(shape) for shape in ((5, 4), (5,), (rows, 4), (rows, 5)))
    layers = mr.Layers({"d.weight": w, "d.bias": b}, train=True)
    y, backward = layers.dense("d", x)
    dx = backward(dy)
    np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-14)
    np.testing.assert_allclose(dx, dy @ w, rtol=1e-14)
    assert layers.squared_norms["d.weight"] == pytest.approx(np.linalg.norm(dy.T @ x) ** 2, rel=1e-13)
    assert layers.squared_norms["d.bias"] == pytest.approx(np.linalg.norm(dy.sum(axis=0)) ** 2, rel=1e-13)


def test_cross_entropy_and_its_gradient():
    logits, labels = RNG.standard_normal((3, 5)), np.array([4, 0, 4])
    loss, dlogits = mr.cross_entropy(logits, labels)
    shifted = logits - logits.max(axis=1, keepdims=True)
    direct = np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(3), labels])
    assert loss == pytest.approx(direct, rel=1e-14)
    numeric = numeric_gradient(lambda a: mr.cross_entropy(a["z"], labels)[0], {"z": logits}, "z")
    np.testing.assert_allclose(dlogits, numeric, rtol=1e-6, atol=1e-9)


def test_integer_inputs_reach_a_reference_unrounded(monkeypatch):
    """bf16 keeps 8 significant bits: token 30001 would become 29952.0 if indices were rounded like weights."""
    seen = {}
    monkeypatch.setitem(ref.REFERENCES, "gemm", lambda op, t, pass_: seen.update(t) or {"y": t["x"]})
    op = Gemm(1, 1, 1)
    ref.reference(op, {"x": np.array([[1.001]], np.float32), "tokens": np.array([30001])}, "forward", "bf16")
    assert seen["tokens"].tolist() == [30001] and seen["x"].dtype == np.float64 and seen["x"][0, 0] == 1.0


def test_the_model_kind_has_its_reference():
    assert ref.REFERENCES["model"] is mr.model


def test_a_parameter_used_twice_is_refused():
    """Squaring each use's gradient apart would give the wrong norm for a shared weight."""
    layers = mr.Layers({"d.weight": np.eye(2), "d.bias": np.zeros(2)}, train=True)
    y, first = layers.dense("d", np.ones((1, 2)))
    _, second = layers.dense("d", y)
    second(np.ones((1, 2)))
    with pytest.raises(ValueError, match="used twice"):
        first(np.ones((1, 2)))


def test_a_model_s_three_passes_are_checked_against_one_draw_and_one_training_pass(monkeypatch):
    """The worker asks ``expected`` once per pass: a model draws its weights once and runs one eval forward and one
    training forward+backward, whose loss and LEARNING_RATE × gradient norms are also the step's."""
    draws, runs = [], []
    make_inputs, resnet = ref.make_inputs, mr.NETWORKS["resnet50"]
    monkeypatch.setattr(ref, "make_inputs", lambda op, seed, rank=0: draws.append(op) or make_inputs(op, seed, rank))
    monkeypatch.setitem(mr.NETWORKS, "resnet50",
                        lambda layers, arrays: runs.append(layers.train) or resnet(layers, arrays))
    caches = (ref.seeded_inputs, ref._model_expected)
    for cache in caches:
        cache.cache_clear()
    op = models.Model(network="resnet50", batch=1, size=32)
    got = {pass_: ref.expected(op, 0, pass_, "fp32") for pass_ in ("step", "forward", "backward")}
    for cache in caches:
        cache.cache_clear()
    assert len(draws) == 1 and sorted(runs) == [False, True]
    assert {pass_: set(outputs) for pass_, outputs in got.items()} == {pass_: set(op.outputs(pass_)) for pass_ in got}
    assert got["step"]["loss"] == got["backward"]["loss"]
    np.testing.assert_array_equal(got["step"]["update_norms"], models.LEARNING_RATE * got["backward"]["grad_norms"])


# ---- whole models against torch float64 autograd

def perturbed(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The canonical weights with every 1-D array (norm scales, shifts, biases, running statistics) made random,
    so that a swapped or ignored one changes the result."""
    rng = np.random.default_rng(1)
    out = dict(weights)
    for name, array in weights.items():
        if array.ndim == 1:
            noise = rng.standard_normal(array.shape).astype(np.float32)
            out[name] = 0.5 + np.abs(noise) if name.endswith("running_var") else array + 0.1 * noise
    return out


def torch_resnet50(nn):
    """ResNet-50 v1.5 from torch.nn blocks, with torchvision's parameter names."""
    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width)
            self.downsample = (nn.Sequential(nn.Conv2d(cin, 4 * width, 1, stride, bias=False),
                                             nn.BatchNorm2d(4 * width)) if stride != 1 or cin != 4 * width else None)

        def forward(self, x):
            y = self.bn1(self.conv1(x)).relu()
            y = self.bn2(self.conv2(y)).relu()
            y = self.bn3(self.conv3(y))
            return (y + (self.downsample(x) if self.downsample is not None else x)).relu()

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = 64
            for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True), start=1):
                stride = 1 if stage == 1 else 2
                layers = [Bottleneck(cin, width, stride)] + [Bottleneck(4 * width, width, 1) for _ in range(blocks - 1)]
                setattr(self, f"layer{stage}", nn.Sequential(*layers))
                cin = 4 * width
            self.fc = nn.Linear(2048, 1000)

        def forward(self, batch):
            x = self.maxpool(self.bn1(self.conv1(batch["images"])).relu())
            for stage in range(1, 5):
                x = getattr(self, f"layer{stage}")(x)
            return self.fc(x.mean(dim=(2, 3)))
    return ResNet50()


def torch_bert_base(nn):
    """BERT-base for sequence classification from torch.nn blocks, with Hugging Face's parameter names."""
    import torch.nn.functional as F

    hidden, heads = 768, 12

    def dense(n_in: int, n_out: int):
        return nn.Linear(n_in, n_out)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.ModuleDict({
                "self": nn.ModuleDict({p: dense(hidden, hidden) for p in ("query", "key", "value")}),
                "output": nn.ModuleDict({"dense": dense(hidden, hidden), "LayerNorm": nn.LayerNorm(hidden, 1e-12)})})
            self.intermediate = nn.ModuleDict({"dense": dense(hidden, 3072)})
            self.output = nn.ModuleDict({"dense": dense(3072, hidden), "LayerNorm": nn.LayerNorm(hidden, 1e-12)})

        def forward(self, x):
            b, length, _ = x.shape
            q, k, v = (self.attention["self"][p](x).view(b, length, heads, -1).transpose(1, 2)
                       for p in ("query", "key", "value"))
            context = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, hidden)
            out = self.attention["output"]
            x = out["LayerNorm"](x + out["dense"](context))
            return self.output["LayerNorm"](x + self.output["dense"](F.gelu(self.intermediate["dense"](x))))

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = nn.ModuleDict({
                "word_embeddings": nn.Embedding(30522, hidden), "position_embeddings": nn.Embedding(512, hidden),
                "token_type_embeddings": nn.Embedding(2, hidden), "LayerNorm": nn.LayerNorm(hidden, 1e-12)})
            self.encoder = nn.ModuleDict({"layer": nn.ModuleList(Layer() for _ in range(12))})
            self.pooler = nn.ModuleDict({"dense": dense(hidden, hidden)})
            self.classifier = dense(hidden, 2)

        def forward(self, batch):
            import torch
            e = self.embeddings
            tokens = batch["tokens"]
            x = e["LayerNorm"](e["word_embeddings"](tokens) + e["position_embeddings"](torch.arange(tokens.shape[1]))
                               + e["token_type_embeddings"](batch["segments"]))
            for layer in self.encoder["layer"]:
                x = layer(x)
            return self.classifier(self.pooler["dense"](x[:, 0]).tanh())
    return Bert()


TORCH_MODELS = {"resnet50": torch_resnet50, "bert_base": torch_bert_base}
# Small enough to be quick; big enough that training-mode batch norm sees several values per channel in layer4
# (at 32×32 and batch 1 it sees one, where torch refuses; at batch 2 two, whose normalized values are ±1 and
# whose input gradient is exactly zero; at 64×64 and batch 1 four, ill-conditioned: grad norms agree to 4e-12;
# here eight: 4e-15).
SMALL = {"resnet50": dict(batch=2, size=64), "bert_base": dict(batch=1, size=8)}


@pytest.fixture(scope="module", params=list(SMALL))
def torch_run(request):
    """One network at a small size: the reference's outputs for all three passes, and torch float64's."""
    torch = pytest.importorskip("torch")
    network = request.param
    op = models.Model(network=network, **SMALL[network])
    weights = {name: array.astype(np.float64) for name, array in perturbed(models.initial_weights(op, 0)).items()}
    batch = models.synthetic_batch(op, 0)
    ours = mr.passes(op, weights | batch)

    with torch.device("meta"):  # no initialization: every parameter and buffer is loaded below
        net = TORCH_MODELS[network](torch.nn)
    state = {name: torch.tensor(array) for name, array in weights.items()}  # float64 copies
    state |= {name.replace("running_mean", "num_batches_tracked"): torch.tensor(0)
              for name in weights if name.endswith("running_mean")}
    net.load_state_dict(state, strict=True, assign=True)  # every name matches
    inputs = {name: torch.tensor(array, dtype=torch.float64 if array.dtype.kind == "f" else None)
              for name, array in batch.items()}
    net.eval()
    with torch.no_grad():
        logits = net(inputs).numpy()
    net.train()
    loss = torch.nn.functional.cross_entropy(net(inputs), inputs["labels"])
    loss.backward()
    params = dict(net.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    torch.optim.SGD(net.parameters(), lr=models.LEARNING_RATE).step()

    def norms(arrays: dict) -> np.ndarray:
        return np.array([np.sqrt(sum(float((arrays[n] ** 2).sum()) for n in names))
                         for names in models.groups(op).values()])
    theirs = {"forward": {"logits": logits},
              "backward": {"loss": loss.detach().numpy(), "grad_norms": norms({n: p.grad for n, p in params.items()})},
              "step": {"loss": loss.detach().numpy(),
                       "update_norms": norms({n: p.detach() - before[n] for n, p in params.items()})}}
    return op, ours, theirs


@pytest.mark.slow
@pytest.mark.parametrize("pass_", ["forward", "backward", "step"])
def test_whole_model_matches_torch_float64(torch_run, pass_):
    op, ours, theirs = torch_run
    assert set(ours[pass_]) == set(op.outputs(pass_)) == set(theirs[pass_])
    for name, expected in theirs[pass_].items():
        assert ours[pass_][name].shape == expected.shape, name
        assert ref.relative_error(ours[pass_][name], expected) < 1e-10, (op.network, pass_, name)
    if pass_ != "forward":  # every group has a gradient of its own
        assert (ours[pass_][op.outputs(pass_)[1]] > 0).all()
