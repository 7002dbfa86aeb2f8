"""Write the zip the MONAI Model Zoo distributes: ``<name>_v<version>.zip`` holding one folder ``<name>/``.

``python -m monai.bundle download --name <name> --url <zip>`` unpacks it as ``<bundle_dir>/<name>/`` (MONAI's
``extractall(..., has_base=True)``), the layout the zoo's releases have.

Usage (from the repository root; ``make bundle-zip``):
    python scripts/bundle_zip.py [--output-dir dist] [--weights-dir DIR] [--require-weights]

The zip holds the files git tracks (what a fresh clone has), less what only develops the repository (tests, CI,
Makefile, linter settings, the repository's own README: the model card is ``docs/README.md``), and the files
``large_files.yml`` names (``models/model.pt``, ``models/model.ts``) where they exist under ``--weights-dir``
(default: the repository), as the zoo's release adds them after downloading. Entries are sorted and dated
2022-05-30 00:00 like the zoo's own ``compress_bundle``, so the same files give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: the bundle's folder name in the Model Zoo (``models/<name>/``) and in the zip
BUNDLE_NAME = "vox2vox_brats_mri_segmentation"
#: tracked folders and files that only develop the repository: not part of the bundle the zoo holds
DEVELOPMENT_FOLDERS = ("tests/", ".ci/")
DEVELOPMENT_FILES = (".gitignore", "Makefile", "pyproject.toml", "README.md")
#: the date the zoo's ``compress_bundle`` gives every file (``touch -t 202205300000``)
ZIP_DATE = (2022, 5, 30, 0, 0, 0)
LARGE_FILES_NAMES = ("large_files.yml", "large_files.yaml", "large_files.json")


def tracked_files(root: Path) -> list[tuple[str, int]]:
    """``(path, git mode)`` of every file git tracks under ``root``, sorted."""
    try:
        out = subprocess.run(["git", "ls-files", "-s", "-z"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise RuntimeError(f"{root} is not a git checkout (the zip holds the files git tracks): {detail}") from exc
    files = []
    for entry in out.stdout.split("\0"):
        if entry:
            info, path = entry.split("\t", 1)
            mode = int(info.split()[0], 8)
            if mode == 0o160000:
                raise RuntimeError(f"{root / path} is a git submodule: a bundle zip cannot hold one")
            files.append((path, mode))
    return sorted(files)


def bundle_files(root: Path) -> list[tuple[str, int]]:
    """``(path, git mode)`` of the bundle's own files: the tracked ones less those that only develop the repository."""
    files = []
    for path, mode in tracked_files(root):
        if path.startswith(DEVELOPMENT_FOLDERS) or path in DEVELOPMENT_FILES:
            continue
        if not (root / path).is_file():
            raise RuntimeError(f"{root / path} is tracked by git but missing from the work tree")
        files.append((path, mode))
    return files


def large_files(root: Path) -> list[str]:
    """The ``path`` of each entry of the bundle's ``large_files.yml`` (or ``.yaml``, ``.json``)."""
    found = [root / name for name in LARGE_FILES_NAMES if (root / name).is_file()]
    if not found:
        return []
    path = found[0]
    try:
        text = path.read_text()
        content = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise RuntimeError(f"{path} cannot be read: {exc}") from exc
    entries = content.get("large_files") if isinstance(content, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and e.get("path") for e in entries):
        raise RuntimeError(f"{path}: expected 'large_files:' with a list of entries, each with a 'path'")
    return [str(e["path"]) for e in entries]


def bundle_version(root: Path) -> str:
    meta_file = root / "configs" / "metadata.json"
    try:
        version = json.loads(meta_file.read_text())["version"]
    except (OSError, ValueError, KeyError) as exc:
        raise RuntimeError(f"{meta_file}: no readable 'version' ({exc})") from exc
    return str(version)


def write_zip(
    root: Path = ROOT, output_dir: Path | None = None, weights_dir: Path | None = None, require_weights: bool = False
) -> tuple[Path, list[str], list[str]]:
    """Write the zip; return its path, the large files it holds and those it lacks."""
    root = Path(root).resolve()
    weights_dir = Path(weights_dir).resolve() if weights_dir is not None else root
    output_dir = Path(output_dir) if output_dir is not None else root / "dist"
    members = {path: (root / path, mode) for path, mode in bundle_files(root)}
    held, missing = [], []
    for path in large_files(root):
        source = weights_dir / path
        if source.is_file():
            members[path] = (source, 0o100644)
            held.append(path)
        else:
            missing.append(path)
    if missing and require_weights:
        raise RuntimeError(f"--require-weights: {', '.join(str(weights_dir / p) for p in missing)} not found")
    output_dir.mkdir(parents=True, exist_ok=True)
    out = output_dir / f"{BUNDLE_NAME}_v{bundle_version(root)}.zip"
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in sorted(members):
            source, mode = members[path]
            info = zipfile.ZipInfo(f"{BUNDLE_NAME}/{path}", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100755 if mode & 0o111 else 0o100644) << 16
            with open(source, "rb") as src, archive.open(info, "w") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    tmp.replace(out)
    return out, held, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist", help="where the zip is written (dist/)")
    parser.add_argument(
        "--weights-dir",
        type=Path,
        default=None,
        help="where the large files (models/model.pt, ...) are read from; default: the repository",
    )
    parser.add_argument(
        "--require-weights",
        action="store_true",
        help="fail unless every file large_files.yml names is found (a release's zip)",
    )
    args = parser.parse_args(argv)
    try:
        out, held, missing = write_zip(ROOT, args.output_dir, args.weights_dir, args.require_weights)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    for path in held:
        print(f"  with {path}")
    for path in missing:
        print(f"  without {path} (not found; large_files.yml names where a release hosts it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
