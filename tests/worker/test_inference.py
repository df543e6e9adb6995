"""The inference loop: the same predictions as the model itself, in batches, with its settings."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from services.worker import inference  # noqa: E402
from services.worker.model import RedshiftModel  # noqa: E402
from services.worker.synthetic import partition  # noqa: E402


@pytest.fixture(scope="module")
def data() -> object:
    return partition(9, 70)


def test_fp32_matches_the_plain_model_across_batch_edges(data) -> None:
    torch.manual_seed(1)
    model = RedshiftModel().eval()
    with torch.inference_mode():
        expected = model([data.images, data.magnitudes]).reshape(-1).numpy()
    predicted = inference.Predictor(model).predict(data.images, data.magnitudes, batch_size=32)  # 70 = 32+32+6
    assert predicted.shape == (70,) and predicted.dtype.name == "float32"
    assert abs(predicted - expected).max() < 1e-5


@pytest.mark.skipif(not inference.cpu_has_bf16(), reason="this CPU has no native bfloat16")
def test_bf16_stays_close(data) -> None:
    torch.manual_seed(1)
    fp32 = inference.Predictor(RedshiftModel()).predict(data.images, data.magnitudes)
    torch.manual_seed(1)
    bf16 = inference.Predictor(RedshiftModel(), precision="bf16").predict(data.images, data.magnitudes)
    assert abs(bf16 - fp32).mean() < 0.05 * abs(fp32).mean() + 0.01


def test_threads_come_from_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSMIC_THREADS", "1")
    assert inference.available_threads() == 1
    monkeypatch.delenv("COSMIC_THREADS")
    assert inference.available_threads() >= 1


def test_unknown_precision() -> None:
    with pytest.raises(ValueError, match="precision"):
        inference.Predictor(RedshiftModel(), precision="fp8")
