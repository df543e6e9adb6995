"""``cosmic data``: seeded partitions in the legacy layout, uploaded and listed straight through S3."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from services import cli
from services.client.datasets import partition_files
from tests.common import REPO


def files(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        (folder / name).write_bytes(b"x" * (100 + index))
    return folder


def test_partition_files_are_numbered_in_numeric_order(tmp_path):
    folder = files(tmp_path / "25MB", "10.pt", "2.pt", "1.npz", "notes.txt", "3.pt.partial")
    numbered, others = partition_files(folder)
    assert [path.name for path in numbered] == ["1.npz", "2.pt", "10.pt"]
    assert [path.name for path in others] == ["notes.txt"]


@pytest.mark.parametrize(("argv", "complaint"), [
    (["data", "generate", "--size", "30MB", "--count", "1"], "invalid choice: '30MB'"),
    (["data", "generate", "--size", "25MB", "--count", "0"], "--count: must be at least 1, got 0"),
    (["data", "upload", "d", "--prefix", "../x"], "'../x' is not a usable S3 prefix"),
    (["data", "ls", "--bucket", "My_Bucket"], "'My_Bucket' is not an S3 bucket name"),
    (["data"], "required: ACTION"),
])
def test_data_options_are_checked(argv, complaint, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2 and complaint in capsys.readouterr().err


@pytest.mark.integration
def test_the_client_does_not_import_torch_to_list_or_upload():
    code = ("import sys; from services.cli import main; import services.client.data, services.client.datasets, "
            "services.client.sweep, services.client.seedtable, services.client.logs, services.client.retry; "
            "print([m for m in sys.modules if m.split('.')[0] == 'torch'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_generate_writes_the_legacy_layout_seeded(tmp_path, capsys):
    pytest.importorskip("torch")
    from services.worker.data import load_partition

    assert cli.main(["data", "generate", "--size", "25MB", "--count", "2", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "cosmic data upload" in out and "--embedded" in out
    first, second = tmp_path / "a" / "25MB" / "1.pt", tmp_path / "a" / "25MB" / "2.pt"
    part = load_partition(first.read_bytes(), "25MB/1.pt")
    assert tuple(part.images.shape) == (1278, 5, 32, 32) and tuple(part.magnitudes.shape) == (1278, 5)
    assert part.redshifts is not None and len(part.redshifts) == 1278
    assert first.read_bytes() != second.read_bytes()
    assert cli.main(["data", "generate", "--size", "25MB", "--count", "1", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "25MB" / "1.pt").read_bytes() == first.read_bytes()


def test_generate_into_a_folder_it_cannot_write_says_so(tmp_path, capsys):
    pytest.importorskip("torch")
    (tmp_path / "taken").write_text("a file where the folder would go")
    assert cli.main(["data", "generate", "--size", "25MB", "--count", "1", "--out", str(tmp_path / "taken")]) == 2
    assert "cannot write partitions into" in capsys.readouterr().err


def test_upload_and_ls_go_straight_to_s3(s3_endpoint, tmp_path, capsys):
    from services.s3store import S3Store

    bucket = f"cosmic-data-{secrets.token_hex(4)}"
    S3Store().ensure_bucket(bucket)
    folder = files(tmp_path / "100MB", "1.pt", "2.pt", "10.pt", "notes.txt")
    assert cli.main(["data", "upload", str(folder), "--prefix", "100MB", "--bucket", bucket]) == 0
    assert "3 partitions (3 uploaded, 0 already there)" in capsys.readouterr().out
    assert sorted(S3Store().keys(bucket, "")) == ["100MB/1.pt", "100MB/10.pt", "100MB/2.pt"]
    assert cli.main(["data", "upload", str(folder), "--prefix", "100MB", "--bucket", bucket]) == 0
    assert "(0 uploaded, 3 already there)" in capsys.readouterr().out
    assert cli.main(["data", "upload", str(folder), "--prefix", "runs/25MB", "--bucket", bucket]) == 0
    capsys.readouterr()
    assert cli.main(["data", "ls", "100MB", "--bucket", bucket]) == 0
    assert "100MB/  3 partitions (1.pt to 10.pt, 7 missing between), 303 bytes" in capsys.readouterr().out
    assert cli.main(["data", "ls", "--bucket", bucket]) == 0
    out = capsys.readouterr().out
    assert f"s3://{bucket}/" in out and "100MB/  3 partitions" in out and "runs/  no partitions" in out
    assert cli.main(["data", "ls", "runs", "--bucket", bucket]) == 0
    assert "  runs/25MB/" in capsys.readouterr().out
    assert cli.main(["data", "ls", "--bucket", f"{bucket}-none"]) == 1
    assert "NoSuchBucket" in capsys.readouterr().err
    assert cli.main(["data", "upload", str(tmp_path / "nowhere"), "--prefix", "x", "--bucket", bucket]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_without_credentials_ls_names_the_embedded_option(tmp_path, monkeypatch, capsys):
    # a user who ran `cosmic serve --embedded` and copied the upload command without --embedded
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert cli.main(["data", "ls", "--bucket", "cosmicai-data"]) == 1
    err = capsys.readouterr().err
    assert "Unable to locate credentials" in err and "add --embedded" in err
