"""The training config is defined once (app/ml/config.py): the API's job request is built from it, a stored job's
config loads strictly (an unknown or renamed key is an error, never a default), and old rows keep loading."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from pydantic import ValidationError

from app.ml.config import DEFAULT_LR_DECAY, TrainConfig, TrainingOptions
from app.schemas import JOB_FIELDS, JobCreate, training_config

DATASET = str(uuid.UUID(int=7))


def stored(**request) -> dict:
    """Job.config as submit_job stores it: the request's JSON dump, every default filled in."""
    return JobCreate.model_validate({"dataset_id": DATASET, **request}).model_dump(mode="json")


def test_the_job_request_is_the_training_options_plus_the_job_fields_in_the_public_order():
    training = list(TrainingOptions.model_fields)
    assert JOB_FIELDS == {"dataset_id", "model_name", "exports", "max_attempts"}
    assert list(JobCreate.model_fields) == ["dataset_id", "model_name", *training, "exports", "max_attempts"]
    assert list(TrainConfig.model_fields) == training


def test_defaults_limits_and_docs_are_the_config_s_own():
    for name, option in TrainingOptions.model_fields.items():
        job = JobCreate.model_fields[name]
        assert (job.annotation, job.default, job.metadata, job.description) == (
            option.annotation,
            option.default,
            option.metadata,
            option.description,
        ), name
    # The run's config differs only where it resolves what the request leaves to the server.
    differs = {n for n, f in TrainConfig.model_fields.items() if f.default != TrainingOptions.model_fields[n].default}
    assert differs == {"lr_decay"}  # required after resolution
    defaults = training_config(stored())
    assert defaults.as_dict() == {
        **{n: f.default for n, f in TrainingOptions.model_fields.items()},
        "lr_decay": DEFAULT_LR_DECAY,
    }


def test_unknown_and_renamed_keys_are_refused():
    with pytest.raises(ValidationError, match="epoch\n.*Extra inputs are not permitted"):
        TrainConfig(arch="resnet18", epoch=3)
    # A stored job whose key no field has any more (a field renamed in the config) fails to load, loudly.
    renamed = {**stored(learning_rate=0.05)}
    renamed["lr"] = renamed.pop("learning_rate")
    with pytest.raises(ValidationError, match="lr\n.*Extra inputs are not permitted"):
        training_config(renamed)


def test_the_config_is_as_strict_as_the_api():
    for bad in ({"epochs": "5"}, {"epochs": True}, {"epochs": 5.0}, {"learning_rate": float("inf")}):
        with pytest.raises(ValidationError):
            TrainConfig(**bad)
    with pytest.raises(ValidationError, match="mixup_prob \\+ cutmix_prob must be at most 1"):
        TrainConfig(mixup_prob=0.6, cutmix_prob=0.5)
    with pytest.raises(ValidationError, match="probe_epochs is for partial, full and lora: linear already trains"):
        TrainConfig(strategy="linear", probe_epochs=1)
    with pytest.raises(ValidationError, match="probe_epochs needs pretrained weights"):
        TrainConfig(strategy="full", weights="none", probe_epochs=1)


def test_lr_decay_is_resolved_for_the_run_and_left_unset_in_the_request():
    assert stored()["lr_decay"] is None  # the stored request (and its idempotency digest) keep what was sent
    assert training_config(stored()).lr_decay == DEFAULT_LR_DECAY
    assert training_config(stored(weights="none", strategy="full")).lr_decay == 1.0
    assert training_config(stored(lr_decay=0.5)).lr_decay == 0.5


def test_stored_jobs_load_as_the_training_config_the_checkpoint_metadata_records():
    config = stored(strategy="partial", lr_decay=0.5, exports=["onnx"], max_attempts=2, model_name="m")
    config["weights"] = "/srv/weights/" + "w" * 1100 + ".safetensors"  # resolved by the server: longer than a request
    cfg = training_config(config)
    # What the worker writes as a checkpoint's "config": every training setting, and nothing of the job's.
    assert json.dumps(cfg.as_dict()) == json.dumps(
        {
            "arch": "efficientnet_lite0",
            "weights": config["weights"],
            "strategy": "partial",
            "unfreeze_stages": 1,
            "lr_decay": 0.5,
            "lora_rank": 8,
            "lora_alpha": 16.0,
            "epochs": 5,
            "batch_size": 64,
            "learning_rate": 0.001,
            "optimizer": "adamw",
            "weight_decay": 0.0001,
            "momentum": 0.9,
            "schedule": "cosine",
            "warmup_epochs": 0.0,
            "label_smoothing": 0.0,
            "grad_clip": None,
            "class_weighting": "none",
            "early_stopping_patience": None,
            "early_stopping_min_delta": 0.0,
            "image_size": 224,
            "augmentation": "basic",
            "mixup_prob": 0.0,
            "cutmix_prob": 0.0,
            "val_fraction": 0.1,
            "seed": 0,
            "num_workers": None,
            "compile": False,
            "probe_epochs": 0,
            "baseline": True,
        }
    )


def test_rows_written_by_earlier_releases_still_load():
    # 2026-11-22, the first release: `augment` (replaced by `augmentation` the same day, ignored since then).
    first = {
        "dataset_id": DATASET,
        "model_name": "default",
        "arch": "resnet18",
        "weights": "imagenet",
        "strategy": "partial",
        "unfreeze_stages": 2,
        "epochs": 3,
        "batch_size": 32,
        "learning_rate": 0.01,
        "optimizer": "sgd",
        "weight_decay": 0.0001,
        "momentum": 0.9,
        "schedule": "constant",
        "warmup_epochs": 0.0,
        "label_smoothing": 0.1,
        "grad_clip": None,
        "image_size": 96,
        "augment": False,
        "val_fraction": 0.1,
        "seed": 3,
        "num_workers": None,
    }
    cfg = training_config(first)
    assert (cfg.arch, cfg.unfreeze_stages, cfg.optimizer, cfg.seed) == ("resnet18", 2, "sgd", 3)
    assert cfg.augmentation == "basic" and cfg.probe_epochs == 0 and cfg.lr_decay == DEFAULT_LR_DECAY
    # Before probe_epochs, compile, baseline, exports and max_attempts existed (2026-11-23).
    later = {k: v for k, v in stored(strategy="lora").items() if k not in ("probe_epochs", "compile", "baseline")}
    del later["exports"], later["max_attempts"]
    assert training_config(later).as_dict() == training_config(stored(strategy="lora")).as_dict()
    # Before the API capped grad_clip at 1e6 (2026-12-01) a request could name a larger norm: the job keeps it.
    assert training_config({**first, "grad_clip": 5e6}).grad_clip == 5e6
    with pytest.raises(ValidationError):
        JobCreate.model_validate({**stored(), "grad_clip": 5e6})


def test_the_config_and_the_api_contract_load_without_torch():
    # The keys CLI and the API contract import app.schemas: listing strategies and architectures costs no torch.
    code = "import sys, app.schemas, app.ml.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]
