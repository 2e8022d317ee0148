r"""The student file: a versioned, checksummed, atomically written ``torch.save`` payload.

A student file is read with ``torch.load(..., weights_only=True)`` (no code runs)
and checked before anything is built from it:

* the header (format name and version) and every configuration field (types,
  ranges, known names);
* every width and count field (``hidden``, ``loading_hidden``, the
  heteroscedastic noise model's ``hidden``, ...) against the sizes of the
  saved tensors, then the state dict against the shapes the configuration
  implies, computed on PyTorch's ``meta`` device (no memory is allocated), so a
  file claiming a 10⁹-unit layer is rejected before any module is built;
* a custom body's class (``module.qualname``) and its submodules' classes
  against the ``body`` passed to :meth:`~pyro_dlf.student.Student.load`
  (files written before this record are not checked);
* every weight finite;
* a SHA-256 checksum over the configuration and every tensor's name, dtype,
  shape and bytes, so flipped bytes are reported instead of loaded.

Writes go to a temporary file in the destination folder, flushed to disk and
then renamed over the destination (:func:`os.replace`, atomic on POSIX and
Windows): an interrupted or failed save leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import IO, Optional, Union

import torch
from torch import Tensor, nn

from pyro_dlf._files import atomic_write, body_record
from pyro_dlf._validation import check_body_record, check_network_fields, check_state_shapes
from pyro_dlf.likelihoods.heteroscedastic import NOISE_PREFIX, HeteroscedasticNoise

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "checksum", "write_payload", "read_payload", "build_model", "body_record",
           "build_noise_model", "NOISE_PREFIX"]

FORMAT_NAME = "pyro_dlf.Student"
#: Version of the file layout. Version 1 files carry no checksum and are still read.
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)

PathOrFile = Union[str, "os.PathLike[str]", IO[bytes]]



def _describe(source: PathOrFile) -> str:
    return repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "the file object"


def checksum(payload: dict) -> str:
    """SHA-256 hex digest of everything in ``payload`` but the checksum itself."""
    digest = hashlib.sha256()
    plain = {k: v for k, v in payload.items() if k not in ("state_dict", "checksum")}
    digest.update(json.dumps(plain, sort_keys=True, default=str).encode())
    for name in sorted(payload["state_dict"]):
        t = payload["state_dict"][name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_payload(payload: dict, destination: PathOrFile) -> None:
    """``torch.save`` with a checksum, atomically when ``destination`` is a path; a student with non-finite weights
    (a diverged fit, which :func:`read_payload` would refuse) is not written."""
    bad = [k for k, v in payload["state_dict"].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"path: the student holds non-finite weights in {bad[0]!r} (the fit diverged) and is not saved; "
                         "refit with a lower lr")
    payload = dict(payload, checksum=checksum(payload))
    if not isinstance(destination, (str, bytes, os.PathLike)):
        torch.save(payload, destination)
        return
    path = os.path.abspath(os.fsdecode(os.fspath(destination)))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"path: the folder {folder!r} does not exist; create it first")
    atomic_write(path, lambda fh: torch.save(payload, fh), binary=True)


def read_payload(source: PathOrFile, map_location="cpu") -> dict:
    """Load and check a student file's payload (header, configuration, weights, checksum)."""
    where = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(os.fspath(source)):
            raise FileNotFoundError(f"path: no file at {os.fspath(source)!r}")
        source = os.fspath(source)
    try:
        payload = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as err:  # the unpickler raises assorted errors on garbage
        # torch's own message advises weights_only=False, which would run code from the file: not repeated here.
        raise ValueError(f"{where} is not a readable pyro_dlf student file (corrupted or not written by Student.save; "
                         f"{type(err).__name__})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise ValueError(f"{where} is not a pyro_dlf student file (missing format header)")
    version = payload.get("format_version")
    if version not in _READABLE_VERSIONS:
        raise ValueError(f"{where} has student format version {version}; this pyro_dlf reads versions {_READABLE_VERSIONS}")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ValueError(f"{where}: the state dict is missing or malformed; the file is corrupted")
    if version >= 2 and payload.get("checksum") != checksum(payload):
        raise ValueError(f"{where} is corrupted: its checksum does not match its contents (the file was modified or damaged)")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{where} holds non-finite weights in {bad[0]!r}; the file is corrupted or the fit diverged")
    _check_config(payload, where)
    return payload


def _positive(value, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: configuration field {name} must be a positive int, got {value!r}")
    return value


def _check_config(payload: dict, where: str) -> None:
    from pyro_dlf.models.deep_latent_factor import ACTIVATIONS, COVARIANCES

    cfg = payload.get("model")
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: the model configuration is missing; the file is corrupted")
    if payload.get("task") not in ("regression", "classification"):
        raise ValueError(f"{where}: unknown task {payload.get('task')!r}")
    if payload.get("dtype") not in ("float32", "float64"):
        raise ValueError(f"{where}: unsupported dtype {payload.get('dtype')!r} (float32 or float64)")
    _positive(cfg.get("num_factors"), "num_factors", where)
    if cfg.get("num_outputs") is not None:
        _positive(cfg["num_outputs"], "num_outputs", where)
    if not cfg.get("custom_body"):
        _positive(cfg.get("in_features"), "in_features", where)
        hidden = cfg.get("hidden")
        if not isinstance(hidden, (list, tuple)):
            raise ValueError(f"{where}: configuration field hidden must be a list of widths, got {hidden!r}")
        for i, width in enumerate(hidden):
            _positive(width, f"hidden[{i}]", where)
        loading = cfg.get("loading_hidden")
        if loading is not None:
            if not isinstance(loading, (list, tuple)) or not loading:
                raise ValueError(f"{where}: configuration field loading_hidden must be null or a list of widths, got {loading!r}")
            for i, width in enumerate(loading):
                _positive(width, f"loading_hidden[{i}]", where)
        if cfg.get("distance_anchors") is not None:
            _positive(cfg["distance_anchors"], "distance_anchors", where)
    else:
        _positive(cfg.get("body_features"), "body_features", where)
    if cfg.get("custom_body"):
        record = payload.get("body_class")
        modules = payload.get("body_modules")
        if record is not None and not isinstance(record, str):
            raise ValueError(f"{where}: the body's class record must be a 'module.qualname' string, got {record!r}; "
                             "the file is corrupted")
        if modules is not None and not (isinstance(modules, list) and all(
                isinstance(m, list) and len(m) == 2 and all(isinstance(v, str) for v in m) for m in modules)):
            raise ValueError(f"{where}: the body's submodule record is malformed; the file is corrupted")
    if cfg.get("activation") not in ACTIVATIONS:
        raise ValueError(f"{where}: unknown activation {cfg.get('activation')!r}")
    if (cfg.get("covariance") or "separable") not in COVARIANCES:
        raise ValueError(f"{where}: unknown covariance {cfg.get('covariance')!r}")
    for name in ("centered_logits", "include_nugget"):
        if not isinstance(payload.get(name, False), bool):
            raise ValueError(f"{where}: field {name} must be true or false, got {payload.get(name)!r}; the file is corrupted")
    if not isinstance(payload.get("prefix", ""), str):
        raise ValueError(f"{where}: field prefix must be a string, got {payload.get('prefix')!r}; the file is corrupted")
    noise = payload.get("noise")
    if isinstance(noise, dict):
        cfg = noise.get("heteroscedastic")
        if not isinstance(cfg, dict):
            raise ValueError(f"{where}: unknown noise model {noise!r}")
        _positive(cfg.get("in_features"), "noise.heteroscedastic.in_features", where)
        if not isinstance(cfg.get("hidden"), (list, tuple)):
            raise ValueError(f"{where}: configuration field noise.heteroscedastic.hidden must be a list of widths, "
                             f"got {cfg.get('hidden')!r}")
        for i, width in enumerate(cfg["hidden"]):
            _positive(width, f"noise.heteroscedastic.hidden[{i}]", where)
    elif noise is not None:
        positive = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf  # noqa: E731
        entries = [v for part in noise for v in (part if isinstance(part, (list, tuple)) else [part])] \
            if isinstance(noise, (list, tuple)) and len(noise) == 2 else None
        if not entries or not all(positive(v) for v in entries):
            raise ValueError(f"{where}: the noise prior must be two positive finite numbers (or two lists, one per output), "
                             f"got {noise!r}")
    factors = payload.get("noise_factors")
    if factors is not None:
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
        gram = factors.get("gram") if isinstance(factors, dict) else None
        if not (isinstance(factors, dict) and number(factors.get("exponent")) and isinstance(gram, list) and gram
                and all(isinstance(row, list) and len(row) == len(gram) and all(number(v) for v in row) for row in gram)):
            raise ValueError(f"{where}: the noise law must be an exponent and a square gram of finite numbers; the file is corrupted")


def build_model(payload: dict, body: Optional[nn.Module], where: str):
    """The :class:`~pyro_dlf.models.DeepLatentFactor` a checked payload describes, with its weights.

    Nothing is allocated from a configuration field before it is checked: the
    width and count fields are first bounded by the saved tensors' sizes
    (:func:`~pyro_dlf._validation.check_network_fields`), then the
    architecture is built on the ``meta`` device and its parameter shapes
    compared with the file's; a custom ``body`` must be of the saved class.
    """
    from pyro_dlf.models.deep_latent_factor import DeepLatentFactor

    cfg = dict(payload["model"])
    custom = cfg.pop("custom_body")
    if custom and body is None:
        raise ValueError("body: this student was saved with a custom body; pass a module of the same architecture as body=")
    if not custom and body is not None:
        raise ValueError("body: this student has the default MLP body, saved whole in the file; drop body=")
    if custom:
        if not isinstance(body, nn.Module):
            raise TypeError(f"body must be a torch.nn.Module of the saved architecture, got {type(body).__name__}")
        check_body_record(body, payload.get("body_class"), payload.get("body_modules"))

    def make():
        return DeepLatentFactor(
            cfg["in_features"], cfg["num_factors"], tuple(cfg["hidden"]) if not custom else (), cfg["num_outputs"],
            body=body if custom else None, body_features=cfg["body_features"] if custom else None,
            activation=cfg["activation"],
            # Files written before the full multivariate model have no covariance keys: separable.
            covariance=cfg.get("covariance") or "separable", centered_loadings=bool(cfg.get("centered_loadings", False)),
            # Files written before separate loading bodies have none.
            loading_hidden=None if custom or cfg.get("loading_hidden") is None else tuple(cfg["loading_hidden"]),
            # Files written before the distance feature have none.
            distance_anchors=None if custom else cfg.get("distance_anchors"),
        )

    # A heteroscedastic noise model's weights travel in the same state dict under their own prefix.
    state = {k: v for k, v in payload["state_dict"].items() if not k.startswith(NOISE_PREFIX)}
    if not custom and cfg.get("distance_anchors") is not None:
        # Files written before the nugget grew with the distance: a constant nugget (β at the smallest positive
        # number, so (1 + d)^β is 1 in floating point); before the reference distance: d_ref = 1, as they kept it.
        dtype = getattr(torch, payload["dtype"])
        state.setdefault("nugget_growth_unconstrained", torch.tensor(torch.finfo(dtype).tiny, dtype=dtype).log())
        state.setdefault("distance_reference", torch.ones((), dtype=dtype))
    check_network_fields({"in_features": cfg.get("in_features"), "num_factors": cfg["num_factors"],
                          "num_outputs": cfg.get("num_outputs"), "body_features": cfg.get("body_features"),
                          "hidden": None if custom else cfg["hidden"],
                          "loading_hidden": None if custom else cfg.get("loading_hidden"),
                          "distance_anchors": None if custom else cfg.get("distance_anchors")}, state, where)
    try:
        with torch.device("meta"):
            # A custom body keeps its own (real) tensors; the heads around it are built on meta.
            expected = {k: tuple(v.shape) for k, v in make().state_dict().items()}
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: the saved model configuration is invalid ({err}); the file is corrupted") from err
    found = {k: tuple(v.shape) for k, v in state.items()}
    if custom and expected != found:
        differ = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
        if differ[0].startswith("body."):
            raise ValueError(f"body does not have the saved architecture ({differ[0]}: file {found.get(differ[0])}, body "
                             f"{expected.get(differ[0])}); pass a module built like the one the student was saved with")
    check_state_shapes(expected, found, where, "weights")
    dlf = make().to(getattr(torch, payload["dtype"]))
    try:
        dlf.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{where}: the saved weights do not fit the saved architecture"
                         f"{' (is body the right architecture?)' if custom else ''}: {err}") from err
    return dlf


def build_noise_model(payload: dict, where: str):
    """The heteroscedastic noise model of a checked payload (``None`` without one), with its weights.

    As for the model, its widths are bounded by its saved tensors and its
    shapes compared on the ``meta`` device before it is built.
    """
    if not isinstance(payload["noise"], dict):
        return None
    cfg = payload["noise"]["heteroscedastic"]
    state = {k[len(NOISE_PREFIX):]: v for k, v in payload["state_dict"].items() if k.startswith(NOISE_PREFIX)}
    check_network_fields({"noise.heteroscedastic.in_features": cfg["in_features"],
                          "noise.heteroscedastic.hidden": cfg["hidden"]}, state, where)
    model = payload["model"]
    if not model.get("custom_body") and cfg["in_features"] != model.get("in_features"):
        raise ValueError(f"{where}: configuration field noise.heteroscedastic.in_features = {cfg['in_features']} but the "
                         f"model reads {model.get('in_features')} input features; the file is corrupted")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in HeteroscedasticNoise(cfg["in_features"], cfg["hidden"]).state_dict().items()}
    check_state_shapes(expected, {k: tuple(v.shape) for k, v in state.items()}, where, "noise model weights")
    noise_model = HeteroscedasticNoise(cfg["in_features"], cfg["hidden"]).to(getattr(torch, payload["dtype"]))
    try:
        noise_model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{where}: the saved noise model does not fit its configuration: {err}") from err
    return noise_model
