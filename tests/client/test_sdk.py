"""The Python SDK against a real server: typed results (the API's models), submit().wait(), events resumed with
Last-Event-ID, APIError with the server's code and message, predict."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from rich.console import Console

from app.schemas import DatasetOut, JobDetail, JobSummary, ModelOut, Page, PredictResponse
from tests.client.conftest import CHEAP_JOB, Server, color_folder
from visiontune import APIError, Client, ClientError, JobCanceled, JobError, ServerUnreachable
from visiontune.archive import zip_imagefolder

pytestmark = pytest.mark.e2e


def test_sdk_upload_submit_wait_events_predict(server: Server, images: Path, tmp_path: Path) -> None:
    archive = zip_imagefolder(images)
    with Client(server.url, server.key) as client:
        sent: list[tuple[int, int]] = []
        dataset = client.datasets.upload(
            archive, "colors-zip", on_progress=lambda done, total: sent.append((done, total))
        )
        assert isinstance(dataset, DatasetOut) and dataset.num_images == 24 and dataset.name == "colors-zip"
        assert sent[-1][0] == sent[-1][1] == archive.stat().st_size
        assert client.datasets.get(dataset.id) == dataset
        page = client.datasets.list(limit=100)
        assert isinstance(page, Page) and dataset.id in [d.id for d in page.items]

        job = client.jobs.submit({**CHEAP_JOB, "epochs": 3}, dataset_id=dataset.id, model_name="sdk")
        assert job.status == "queued"
        screen = io.StringIO()
        done = job.wait(progress=True, timeout=120, console=Console(file=screen, width=150))
        assert isinstance(done, JobDetail) and done.status == "succeeded" and done.model_version == 1
        assert [e.epoch for e in done.epochs] == [1, 2, 3]
        assert "epoch 3/3 done" in screen.getvalue() and "status: succeeded" in screen.getvalue()

        # A finished job's events replay; resuming after any of them gives exactly the ones after it.
        events = list(job.events())
        assert [e.type for e in events][0] == "status" and events[-1].data["status"] == "succeeded"
        assert any(e.type == "progress" for e in events) and any(e.type == "epoch" for e in events)
        assert list(job.events(last_event_id=events[1].id)) == events[2:]

        summaries = client.jobs.list(status="succeeded")
        assert all(isinstance(s, JobSummary) for s in summaries.items) and job.id in [s.id for s in summaries.items]

        result = client.predict(
            [images / "green" / "00.png", ("blue.png", (images / "blue" / "00.png").read_bytes())], model="sdk", top_k=1
        )
        assert isinstance(result, PredictResponse) and result.version == 1
        assert [p.top[0].label for p in result.predictions] == ["green", "blue"]
        model = client.models.set_alias("sdk", "staging", 1)
        assert isinstance(model, ModelOut) and model.aliases == {"staging": 1}
        assert client.predict(images / "red" / "00.png", model="sdk@staging").predictions[0].top[0].label == "red"


def test_sdk_errors(server: Server, images: Path) -> None:
    with Client(server.url, server.key) as client:
        with pytest.raises(APIError) as bad:
            client.jobs.submit(dataset_id="00000000-0000-0000-0000-000000000000", epochs=0)
        assert bad.value.status == 422 and bad.value.code == "validation_error" and "epochs" in bad.value.message
        with pytest.raises(APIError) as missing:
            client.jobs.get("00000000-0000-0000-0000-000000000000")
        assert missing.value.status == 404 and missing.value.code == "not_found"
        with pytest.raises(ClientError, match="one folder per class"):
            client.datasets.upload(images / "red")  # images, but no class folders

        # A job canceled while queued: wait() raises JobCanceled (a JobError) carrying the final state.
        dataset = client.datasets.list().items[0]
        job = client.jobs.submit({**CHEAP_JOB, "epochs": 50}, dataset_id=dataset.id, model_name="canceled")
        job.cancel()
        with pytest.raises(JobCanceled) as canceled:
            job.wait(timeout=60)
        assert isinstance(canceled.value, JobError) and canceled.value.job.status == "canceled"

    with Client(server.url, "vt_" + "x" * 43) as stranger, pytest.raises(APIError) as refused:
        stranger.models.list()
    assert refused.value.status == 401
    with Client("http://127.0.0.1:9", "vt_x") as nowhere, pytest.raises(ServerUnreachable):
        nowhere.datasets.list()


def test_a_folder_is_zipped_in_imagefolder_layout(tmp_path: Path) -> None:
    images = color_folder(tmp_path / "colors")
    (images / "red" / ".hidden.png").write_bytes(b"x")
    (images / "notes.txt").write_text("not an image")
    archive = zip_imagefolder(images)
    try:
        names = zipfile.ZipFile(archive).namelist()
    finally:
        archive.unlink()
    assert len(names) == 24 and {n.split("/")[0] for n in names} == {"red", "green", "blue"}
