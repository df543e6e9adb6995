"""The lean engine: an export made once and verified, run by the handler without torch, and every
way an export can be wrong (corrupt, stale, of other inputs) a function error naming it."""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("openvino")
pytest.importorskip("onnxscript")
from services.worker import export as export_module  # noqa: E402
from services.worker import handler as handler_module  # noqa: E402
from services.worker.errors import ExportError  # noqa: E402
from services.worker.lean import export_name, manifest_name, sha256_of  # noqa: E402
from tests.worker.conftest import World  # noqa: E402
from tests.worker.test_handler import Context, expected_predictions  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Exported:
    checkpoint: bytes
    onnx: bytes
    manifest: dict[str, Any]


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The tiny model's checkpoint, exported and verified once (about 10 s on an idle machine)."""
    path = tmp_path_factory.mktemp("export") / "tiny.pt"
    torch.save(tiny_model.state_dict(), path)
    done = export_module.export(path)
    return Exported(path.read_bytes(), done.path.read_bytes(), json.loads(done.manifest.read_text()))


def upload(world: World, checkpoint: bytes, onnx: bytes | None, manifest: dict[str, Any] | None) -> str:
    """A model folder of its own holding ``checkpoint`` and, when given, an export beside it; its key."""
    key = f"models/{secrets.token_hex(4)}/tiny.pt"
    world.store.put(world.bucket, key, checkpoint)
    if onnx is not None:
        world.store.put(world.bucket, export_name(key), onnx)
    if manifest is not None:
        world.store.put_json(world.bucket, manifest_name(key), manifest)
    return key


@pytest.fixture
def invoke(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, Any]], dict]:
    monkeypatch.setenv("COSMIC_WORKER_SCRATCH_DIR", str(tmp_path / "scratch"))
    monkeypatch.delenv("COSMIC_WORKER_ENGINE", raising=False)
    monkeypatch.setattr(handler_module, "_sandbox", None)
    return lambda event: handler_module.handler(event, Context())


def event_for(world: World, key: str) -> dict[str, Any]:
    return world.event(checkpoint={"bucket": world.bucket, "key": key})


def rank_document(world: World, event: dict[str, Any]) -> dict[str, Any]:
    return world.store.get_json(world.bucket, f"{event['result_path']}/0.json")


def test_native_path_in_a_fresh_interpreter_never_imports_torch(world: World, exported: Exported, tmp_path: Path,
                                                                 tiny_model) -> None:
    event = event_for(world, upload(world, exported.checkpoint, exported.onnx, exported.manifest))
    script = ("import json, sys\n"
              "from services.worker import handler\n"
              "class Context:\n    aws_request_id = 'fresh'\n"
              f"result = handler.handler(json.loads({json.dumps(json.dumps(event))}), Context())\n"
              "print(json.dumps({'status': result['status'], 'torch': sorted(m for m in sys.modules "
              "if m == 'torch' or m.startswith('torch.'))}))\n")
    env = {**os.environ, "COSMIC_WORKER_SCRATCH_DIR": str(tmp_path / "scratch"), "COSMIC_WORKER_ENGINE": "auto"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"status": "succeeded", "torch": []}
    assert rank_document(world, event)["runtime"]["engine"] == "openvino"
    predicted = np.load(io.BytesIO(world.store.get(world.bucket, f"{event['result_path']}/predictions/0.npy").data))
    expected, _ = expected_predictions(world, tiny_model, world.partitions)
    assert np.abs(predicted - expected).mean() < 1e-4


def test_a_checkpoint_without_an_export_runs_on_torch_and_says_so(world: World, exported: Exported, invoke,
                                                                  caplog: pytest.LogCaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from services import logs

    monkeypatch.setattr(logs, "configure", lambda *args, **kwargs: None)  # keep pytest's capturing handler
    caplog.set_level(logging.INFO)
    event = event_for(world, upload(world, exported.checkpoint, None, None))
    assert invoke(event)["status"] == "succeeded"
    assert rank_document(world, event)["runtime"]["engine"] == "torch"
    assert any(record.getMessage() == "export_missing" for record in caplog.records)


def test_the_engine_setting_selects_torch_even_with_an_export(world: World, exported: Exported, invoke,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSMIC_WORKER_ENGINE", "torch-fp32")
    event = event_for(world, upload(world, exported.checkpoint, exported.onnx, exported.manifest))
    assert invoke(event)["status"] == "succeeded"
    runtime = rank_document(world, event)["runtime"]
    assert (runtime["engine"], runtime["precision"]) == ("torch", "fp32")


def test_a_corrupted_export_is_a_function_error_naming_it(world: World, exported: Exported, invoke) -> None:
    corrupted = bytearray(exported.onnx)
    corrupted[len(corrupted) // 2] ^= 0xFF  # one weight's byte: still a loadable model, a wrong one
    key = upload(world, exported.checkpoint, bytes(corrupted), exported.manifest)
    with pytest.raises(ExportError, match=rf"s3://{world.bucket}/{key}\.onnx has SHA-256 .* corrupted") as caught:
        invoke(event_for(world, key))
    assert caught.value.export == f"s3://{world.bucket}/{key}.onnx"


def test_an_export_of_another_checkpoint_is_refused(world: World, exported: Exported, invoke, tiny_model) -> None:
    other = {name: tensor + 0.01 for name, tensor in tiny_model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(other, buffer)
    key = upload(world, buffer.getvalue(), exported.onnx, exported.manifest)
    with pytest.raises(ExportError, match="was made from another checkpoint"):
        invoke(event_for(world, key))
    event = event_for(world, upload(world, exported.checkpoint, exported.onnx, exported.manifest))
    event["checkpoint"]["sha256"] = "0" * 64  # the event's digest wins over the ETag
    with pytest.raises(ExportError, match="the event's checkpoint SHA-256 is 0000"):
        invoke(event)


def _onnx_with_magnitudes_of(width: int, path: Path) -> bytes:
    """A valid ONNX model whose ``magnitudes`` input is ``[?, width]`` (the redshift model's is 5)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["magnitudes"], ["redshift"], keepdims=1)], "wrong",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 5, 32, 32]),
         helper.make_tensor_value_info("magnitudes", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("redshift", TensorProto.FLOAT, ["batch", 1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path.read_bytes()


def test_an_export_of_other_inputs_is_a_function_error(world: World, exported: Exported, invoke,
                                                       tmp_path: Path) -> None:
    wrong = _onnx_with_magnitudes_of(6, tmp_path / "wrong.onnx")
    manifest = {**exported.manifest, "sha256": sha256_of(tmp_path / "wrong.onnx"), "bytes": len(wrong)}
    key = upload(world, exported.checkpoint, wrong, manifest)
    with pytest.raises(ExportError, match=r"does not fit the redshift model: input magnitudes .*\[\?,6\]"):
        invoke(event_for(world, key))


def test_a_malformed_manifest_is_named(world: World, exported: Exported, invoke) -> None:
    key = upload(world, exported.checkpoint, exported.onnx, {**exported.manifest, "sha256": "not hex"})
    with pytest.raises(ExportError, match=rf"{key}\.onnx\.json: manifest digests"):
        invoke(event_for(world, key))


def test_an_export_that_disagrees_with_its_model_is_refused(exported: Exported, tmp_path: Path, tiny_model,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint's model and the export differ (here: the export is of the unperturbed model)."""
    perturbed = {name: tensor * 1.05 if tensor.is_floating_point() else tensor
                 for name, tensor in tiny_model.state_dict().items()}
    checkpoint = tmp_path / "perturbed.pt"
    torch.save(perturbed, checkpoint)
    monkeypatch.setattr(export_module, "_to_onnx", lambda model, path: Path(path).write_bytes(exported.onnx))
    with pytest.raises(ExportError, match=r"disagrees with the torch model .* refused, nothing written"):
        export_module.export(checkpoint)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["perturbed.pt"]


def test_the_export_matches_the_torch_model_within_bounds(exported: Exported) -> None:
    verified = exported.manifest["verified"]
    assert verified["engine"] == "openvino" and verified["precision"] == "fp32"
    assert verified["mean_abs_diff"] < 1e-4 and verified["max_abs_diff"] < 1e-2


@pytest.mark.parametrize("streams", [1, 2])
def test_the_lean_predictor_matches_the_model_across_batch_edges(exported: Exported, tiny_model, tmp_path: Path,
                                                                 streams: int) -> None:
    from services.worker.lean import LeanPredictor
    from services.worker.synthetic import partition

    (tmp_path / "m.onnx").write_bytes(exported.onnx)
    data = partition(9, 70)
    with torch.inference_mode():
        expected = tiny_model([torch.from_numpy(data.images), torch.from_numpy(data.magnitudes)]).reshape(-1).numpy()
    seen: list[int] = []
    predicted = LeanPredictor(tmp_path / "m.onnx", threads=2, streams=streams).predict(
        data.images, data.magnitudes, batch_size=32, after_batch=seen.append)  # 70 = 32 + 32 + 6
    assert seen == [32, 64, 70] and predicted.shape == (70,) and predicted.dtype == np.float32
    assert np.abs(predicted - expected).max() < 1e-4


def test_the_lean_predictor_leaves_cores_to_the_runtime(exported: Exported, tmp_path: Path) -> None:
    # pinned, two one-vCPU sandboxes of the local runtime both ran on core 0, at half speed each
    from services.worker.lean import LeanPredictor

    (tmp_path / "m.onnx").write_bytes(exported.onnx)
    for streams in (1, 2):
        predictor = LeanPredictor(tmp_path / "m.onnx", threads=2, streams=streams)
        assert predictor._compiled.get_property("ENABLE_CPU_PINNING") is False
