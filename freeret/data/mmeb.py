"""MMEB-eval subsets: find one locally (or fetch it from the hub), read it into a RetrievalSet.

Local layouts, tried in order under ``root`` (``paths.mmeb_root``):
``<root>/<Subset>/*.parquet`` (a snapshot of ``TIGER-Lab/MMEB-eval``), ``<root>/<Subset>.parquet``,
``<root>/<Subset>.jsonl`` or ``.jsonl.gz``. Images are read from ``image_root`` (default
``<root>/eval_images``, where the dataset's ``images.zip`` unpacks). ``dataset.source`` picks where the root is
(``MMEB_SOURCES``): ``local`` (no download), ``hub`` or null (fetched from the hub when not local), ``fixture`` (the
toy miniature, :mod:`freeret.toy.mmeb_fixture`, for the offline fast mode).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from freeret.data.retrieval_set import RetrievalSet, build_set, read_rows, resolve_path
from freeret.errors import DataError
from freeret.paths import hub_offline
from freeret.registry import Registry

MMEB_SOURCES: Registry[Callable[[Mapping[str, Any]], Path]] = Registry("dataset.source", {
    "local": "freeret.data.mmeb:local_root",
    "hub": "freeret.data.mmeb:local_root",  # the same root, filled from the hub when the subset is not there
    "fixture": "freeret.toy.mmeb_fixture:build_mmeb_fixture",
}, message="{what}={name!r} is not one of null, {known}")
"""``dataset.source`` (null: ``local``, then the hub) -> the function giving a subset config's root folder."""
FETCHING = (None, "hub")  # the sources that download a subset missing from their root


def _local_files(root: Path, subset: str) -> list[Path]:
    folder = root / subset
    if folder.is_dir():
        found = sorted(folder.glob("*.parquet")) or sorted(folder.glob("*.jsonl")) or sorted(folder.glob("*.jsonl.gz"))
        if found:
            return found
    for suffix in (".parquet", ".jsonl", ".jsonl.gz"):
        if (root / f"{subset}{suffix}").exists():
            return [root / f"{subset}{suffix}"]
    return []


def _from_hub(repo: str, subset: str, root: Path) -> list[Path]:
    """Download one subset's parquet files into ``root`` (the hub layout); [] if the hub cannot serve it."""
    if hub_offline():
        return []
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo, repo_type="dataset", allow_patterns=[f"{subset}/*"], local_dir=str(root))
    except Exception:  # noqa: BLE001 - no network, no such repo: the caller explains what to do
        return []
    return _local_files(root, subset)


def _strip(text: str | None, instruction: str) -> str | None:
    """``text`` without a leading instruction (MMEB writes it before the content)."""
    if not text or not instruction:
        return text
    body = text.replace("<|image_1|>", "").lstrip()
    return body[len(instruction):].lstrip() if body.startswith(instruction) else text


def _rows(files: list[Path], cfg: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for path in files:
        for raw in read_rows(path):
            if cfg.get("strip_instruction"):
                raw = dict(raw)
                raw["qry_text"] = _strip(raw.get("qry_text"), str(cfg.get("query_instruction") or ""))
                texts = raw.get("tgt_text")
                if isinstance(texts, (list, tuple)):
                    raw["tgt_text"] = [_strip(t, str(cfg.get("target_instruction") or "")) for t in texts]
            yield raw


def _check_images(rset: RetrievalSet, image_root: Path, subset: str) -> None:
    """Fail in one line when the images are missing as a whole (a missing zip), not item by item."""
    paths = [it.image for it in rset.items.values() if it.image]
    if paths and not any(Path(p).exists() for p in paths[:50]):
        raise DataError(
            f"MMEB {subset}: images not found (first: {paths[0]}); unzip images.zip from TIGER-Lab/MMEB-eval so that "
            f"{image_root} holds them, or set dataset.image_root=DIR"
        )


def local_root(cfg: Mapping[str, Any]) -> Path:
    """``dataset.source=local`` (and ``hub``, null): ``dataset.root``, by default ``data/mmeb``."""
    return resolve_path(str(cfg.get("root") or "data/mmeb"))


def locate(cfg: Mapping[str, Any]) -> tuple[Path, list[Path]]:
    """(root, files) of one subset: local, else fetched from the hub; one-line DataError when neither works."""
    subset = str(cfg.get("subset") or cfg["name"])
    source = cfg.get("source")
    root = MMEB_SOURCES["local" if source is None else source](cfg)
    files = _local_files(root, subset)
    if not files and source in FETCHING:
        files = _from_hub(str(cfg.get("hf_repo") or "TIGER-Lab/MMEB-eval"), subset, root)
    if not files:
        raise DataError(
            f"MMEB {subset} not found under {root} and the hub cannot be reached; put {root}/{subset}/test-*.parquet "
            f"(from TIGER-Lab/MMEB-eval) or {root}/{subset}.jsonl there with its images in {root}/eval_images, "
            f"or set paths.mmeb_root=DIR (or run the offline check: mode=fast)"
        )
    return root, files


def load_mmeb_subset(cfg: Mapping[str, Any]) -> RetrievalSet:
    """The RetrievalSet of one ``conf/dataset/mmeb`` entry."""
    subset = str(cfg.get("subset") or cfg["name"])
    root, files = locate(cfg)
    image_root = resolve_path(cfg["image_root"]) if cfg.get("image_root") else root / "eval_images"
    rset = build_set(str(cfg.get("name", subset)), _rows(files, cfg), image_root, limit=cfg.get("limit"),
                     pool=str(cfg.get("pool", "rows")))
    _check_images(rset, image_root, subset)
    return rset
