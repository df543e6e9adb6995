"""The inference loop: the same predictions as the model itself, in batches, with its settings.

Each precision's contract: ``fp32`` is the model's own arithmetic (BatchNorm and adjacent linear
layers folded, nothing rounded: within 1e-5); ``bf16-mlp`` (the ``auto`` default on a CPU with
native bfloat16) stays within 1e-3 mean absolute difference of fp32 on a fitted model; ``bf16``
only has to stay close; every bf16 request falls back to fp32 where the CPU has no native bf16.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from services.worker import inference  # noqa: E402
from services.worker.demo_assets import fit  # noqa: E402
from services.worker.model import RedshiftModel  # noqa: E402
from services.worker.synthetic import partition  # noqa: E402

native_bf16 = pytest.mark.skipif(not inference.cpu_has_bf16(), reason="this CPU has no native bfloat16")


@pytest.fixture(scope="module")
def data() -> object:
    """Partition 9 as torch tensors (the plain model takes tensors; the Predictor takes either)."""
    p = partition(9, 70)
    return type(p)(*(torch.from_numpy(a) for a in (p.images, p.magnitudes, p.redshifts)))


@pytest.fixture(scope="module")
def fitted(integration: None) -> RedshiftModel:
    """A briefly fitted demo model (the head and magnitude branch trained, ~8 s on 2 cores)."""
    model, _ = fit(steps=60, samples=512)
    return model.eval()


def _with_batchnorm_statistics(model: RedshiftModel) -> RedshiftModel:
    """Non-trivial running statistics and affine terms, so that folding them is really tested."""
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            for tensor, low, high in ((module.running_mean, -0.5, 0.5), (module.running_var, 0.5, 2.0),
                                      (module.weight, 0.5, 1.5), (module.bias, -0.2, 0.2)):
                tensor.data.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model.eval()


@pytest.mark.integration
@pytest.mark.parametrize("streams", [1, 2])
def test_fp32_matches_the_plain_model_across_batch_edges(data, streams: int) -> None:
    torch.manual_seed(1)
    model = _with_batchnorm_statistics(RedshiftModel())
    with torch.inference_mode():
        expected = model([data.images, data.magnitudes]).reshape(-1).numpy()
    predictor = inference.Predictor(model, "fp32", threads=2, streams=streams)
    predicted = predictor.predict(data.images, data.magnitudes, batch_size=32)  # 70 = 32+32+6
    assert predicted.shape == (70,) and predicted.dtype.name == "float32"
    assert abs(predicted - expected).max() < 1e-5


@pytest.mark.integration
@pytest.mark.parametrize("streams", [1, 2])
def test_the_per_batch_hook_runs_after_each_batch_and_can_stop_the_rest(data, streams: int) -> None:
    """Where a rank checks for cancel: a hook that raises stops inference before the next batch."""
    predictor = inference.Predictor(RedshiftModel(), "fp32", threads=2, streams=streams)
    seen: list[int] = []
    predictor.predict(data.images, data.magnitudes, batch_size=32, after_batch=seen.append)
    assert seen == [32, 64, 70]
    forwards: list[int] = []
    forward = predictor._forward
    predictor._forward = lambda images, magnitudes: forwards.append(len(images)) or forward(images, magnitudes)

    def stop_after_the_first(done: int) -> None:
        raise StopIteration(done)  # what JobCancelled does in a rank

    with pytest.raises(StopIteration):
        predictor.predict(data.images, data.magnitudes, batch_size=32, after_batch=stop_after_the_first)
    assert sum(forwards) == 32, f"{sum(forwards)} samples inferred after the hook asked to stop at 32"


@pytest.mark.integration
@pytest.mark.parametrize("streams", [1, 2, 3])
def test_every_sample_is_inferred_once_whatever_the_streams(data, streams: int) -> None:
    """A batch's slices end at the batch's end: a slice that ran on into the next batch inferred
    its samples twice (with 3 streams and batch 32, 2 samples a batch)."""
    predictor = inference.Predictor(RedshiftModel(), "fp32", threads=3, streams=streams)
    forwards: list[int] = []
    forward = predictor._forward
    predictor._forward = lambda images, magnitudes: forwards.append(len(images)) or forward(images, magnitudes)
    predictor.predict(data.images, data.magnitudes, batch_size=32)
    assert sum(forwards) == 70, forwards


@pytest.mark.integration
def test_the_model_is_left_as_it_was(data) -> None:
    torch.manual_seed(1)
    model = RedshiftModel().eval()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    inference.Predictor(model, "fp32").predict(data.images, data.magnitudes)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)


@pytest.mark.integration
def test_batchnorm_folding_is_exact() -> None:
    torch.manual_seed(2)
    cnn = _with_batchnorm_statistics(RedshiftModel()).cnn
    folded = inference.fold_batchnorm(cnn.features)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in cnn.features.modules()), "the original is kept"
    images = torch.randn(16, 5, 32, 32)
    with torch.inference_mode():
        assert (folded(images) - cnn.features(images)).abs().max() < 1e-5


@native_bf16
def test_default_is_bf16_mlp_within_the_accuracy_bound(fitted: RedshiftModel) -> None:
    held_out = partition(11, 256)
    images, magnitudes = held_out.images, held_out.magnitudes
    default = inference.Predictor(fitted)
    assert default.precision == "bf16-mlp"
    fp32 = inference.Predictor(fitted, "fp32").predict(images, magnitudes)
    assert abs(default.predict(images, magnitudes) - fp32).mean() < 1e-3


@native_bf16
def test_bf16_stays_close(data, fitted: RedshiftModel) -> None:
    fp32 = inference.Predictor(fitted, "fp32").predict(data.images, data.magnitudes)
    bf16 = inference.Predictor(fitted, "bf16").predict(data.images, data.magnitudes)
    assert abs(bf16 - fp32).mean() < 0.05 * abs(fp32).mean() + 0.01


@pytest.mark.integration
@pytest.mark.parametrize("requested", ["auto", "bf16-mlp", "bf16"])
def test_fp32_without_native_bf16(monkeypatch: pytest.MonkeyPatch, data, requested: str) -> None:
    monkeypatch.setattr(inference, "cpu_has_bf16", lambda: False)
    torch.manual_seed(1)
    model = RedshiftModel().eval()
    predictor = inference.Predictor(model, requested)
    assert predictor.precision == "fp32"
    with torch.inference_mode():
        expected = model([data.images, data.magnitudes]).reshape(-1).numpy()
    assert abs(predictor.predict(data.images, data.magnitudes) - expected).max() < 1e-5


def test_auto_prefers_bf16_mlp_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "cpu_has_bf16", lambda: True)
    assert inference.resolve_precision("auto") == "bf16-mlp"
    assert inference.resolve_precision("fp32") == "fp32"
    assert inference.resolve_precision("bf16") == "bf16"


def test_threads_come_from_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSMIC_THREADS", "1")
    assert inference.available_threads() == 1
    monkeypatch.delenv("COSMIC_THREADS")
    assert inference.available_threads() >= 1


@pytest.mark.integration
def test_streams_are_at_most_the_threads() -> None:
    model = RedshiftModel().eval()
    assert inference.Predictor(model, "fp32", threads=1).streams == 1
    assert inference.Predictor(model, "fp32", threads=2, streams=1).streams == 1
    assert inference.Predictor(model, "fp32", threads=2, streams=8).streams == 2


@pytest.mark.integration
def test_unknown_precision() -> None:
    with pytest.raises(ValueError, match="precision"):
        inference.Predictor(RedshiftModel(), precision="fp8")
