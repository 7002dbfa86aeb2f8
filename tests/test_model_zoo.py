"""The MONAI Model Zoo's checks of a bundle, run offline on this one.

Each test reproduces one step of the zoo's CI (Project-MONAI/model-zoo: ``ci/verify_bundle.py``,
``ci/run_premerge_cpu.sh``, ``ci/get_bundle_requirements.py``, ``ci/unit_tests/``, ``.pre-commit-config.yaml``)
with the same MONAI entry points and the zoo's defaults, where the zoo would download (the schema, the large
files) on local copies or on what the download would be given:

- ``verify_bundle_directory``: required files (``configs/metadata.json``, ``LICENSE``), preferred files (an
  inference config, ``models/model.pt`` or its entry in ``large_files.yml``), and the large files' entries;
- ``verify_version_changes``: ``version`` and ``changelog``;
- ``verify_metadata_format``: ``verify_metadata`` against the schema the metadata's ``schema`` URL names;
- ``get_bundle_requirements``: the versions the zoo installs from the metadata are the ones tested here;
- ``verify_bundle_properties``: inference properties (MONAI's meta and inference property sets);
- ``verify_data_shape`` and ``verify_torchscript``: ``verify_net_in_out`` and ``ckpt_export`` at the zoo's defaults;
- ``ci/unit_tests``: train one epoch with overrides, then evaluate, then infer, each initialised, checked
  (``check_properties``), run and finalised;
- the pre-commit hooks (files <= 1024 KB, JSON formatted with indent 4, YAML and TOML that parse, ...);
- the zip the zoo distributes (``make bundle-zip``), unpacked by ``monai.bundle download`` into a temporary
  folder, where the same checks pass and inference runs by its ``bundle_root`` alone.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import pytest
import torch
from monai.apps.utils import download_url
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, create_workflow, verify_metadata, verify_net_in_out
from monai.bundle.properties import InferProperties, MetaProperties
from monai.bundle.scripts import _get_fake_spatial_shape

from bundle.demo_data import make_dataset
from bundle.networks import Vox2VoxDiscriminator, Vox2VoxGenerator
from helpers import TINY_MODEL, cli_overrides
from scripts import bundle_zip

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
META_FILE = CONFIGS / "metadata.json"
#: schemas the metadata may name, with their md5 as MONAI records it (tests/data/SOURCES.md): offline copies of the
#: release assets the zoo's ci/prepare_schema.py downloads from the metadata's "schema" URL
SCHEMA_RELEASE = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
SCHEMA_COPIES = {"meta_schema_20240725.json": "06954cad2cc5d3784e72077ac76f0fc8"}
#: .pre-commit-config.yaml: check-added-large-files --maxkb=1024 (CONTRIBUTING.md allows 25 MB; the hook is stricter)
MAX_KB = 1024
#: requirements.txt pins that the bundle does not run on: tests and development (absl-py comes with surface-distance)
NOT_RUNTIME = {"pytest", "medpy", "simpleitk", "ruff", "pre-commit-hooks", "ruamel.yaml", "absl-py"}
ZOO_DEFAULT_KEYS = {"monai_version": "monai", "pytorch_version": "torch", "numpy_version": "numpy"}


def metadata(root: Path = ROOT) -> dict:
    return json.loads((root / "configs" / "metadata.json").read_text())


def run(cmd: list[str], cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command as the zoo's CI does (a subprocess, ``CI=true``); fail with its output."""
    env = {**os.environ, "CI": "true", **(env or {})}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def find_bundle_file(folder: Path, name: str) -> Path | None:
    """ci/verify_bundle.py ``_find_bundle_file``: ``name`` with a json, yaml or yml suffix."""
    found = [
        folder / f"{name}.{suffix}" for suffix in ("json", "yaml", "yml") if (folder / f"{name}.{suffix}").is_file()
    ]
    return found[-1] if found else None


def large_file_entries(root: Path) -> list[dict]:
    """``large_files`` as ci/utils.py ``download_large_files`` reads it (ConfigParser), [] without the file."""
    path = find_bundle_file(root, "large_files")
    if path is None:
        return []
    parser = ConfigParser()
    parser.read_config(str(path))
    entries = parser.get().get("large_files") if isinstance(parser.get(), dict) else None
    assert isinstance(entries, list) and entries, f"{path}: expected 'large_files:' with a list of entries"
    return entries


def directory_problems(root: Path) -> list[str]:
    """ci/verify_bundle.py ``verify_bundle_directory`` (less the download): what the zoo would refuse."""
    problems = []
    if not (root / "configs" / "metadata.json").is_file():
        problems.append(f"necessary file {root / 'configs' / 'metadata.json'} is missing")
    if not (root / "LICENSE").is_file():
        problems.append(f"necessary file {root / 'LICENSE'} is missing")
    if find_bundle_file(root / "configs", "inference") is None:
        problems.append(f"no inference config (inference.json, .yaml or .yml) in {root / 'configs'}")
    downloadable = {entry.get("path") for entry in large_file_entries(root)}
    if not (root / "models" / "model.pt").is_file() and "models/model.pt" not in downloadable:
        problems.append(
            f"preferred file {root / 'models' / 'model.pt'} is missing and large_files.yml does not name it"
        )
    return problems


def version_problems(meta: dict) -> list[str]:
    """ci/verify_bundle.py ``verify_version_changes``, and the changelog's order (newest first, as the zoo's)."""
    if "version" not in meta:
        return ["'version' is missing in configs/metadata.json"]
    if "changelog" not in meta:
        return ["'changelog' is missing in configs/metadata.json"]
    version, changelog = meta["version"], meta["changelog"]
    problems = []
    if version not in changelog:
        problems.append(f"version {version!r} is missing in the 'changelog' of configs/metadata.json")
    pattern = re.compile(r"^\d+\.\d+\.\d+$")
    bad = [v for v in [version, *changelog] if not pattern.match(str(v))]
    if bad:
        problems.append(f"versions not of the form MAJOR.MINOR.PATCH in configs/metadata.json: {bad}")
    elif list(changelog)[0] != version or list(changelog) != sorted(
        changelog, key=lambda v: tuple(map(int, v.split("."))), reverse=True
    ):
        problems.append(f"changelog of configs/metadata.json must list {version!r} first, newest to oldest")
    return problems


def schema_copy(meta: dict) -> tuple[Path, str]:
    """The offline copy of the schema the metadata's ``schema`` URL names, and its md5."""
    url = meta.get("schema", "")
    name = url.rsplit("/", 1)[-1]
    assert url == SCHEMA_RELEASE + name and name in SCHEMA_COPIES, (
        f"configs/metadata.json 'schema' is {url!r}: the zoo's CI downloads it, and this bundle is checked against "
        f"{SCHEMA_RELEASE}{' or '.join(SCHEMA_COPIES)} (verified copies in tests/data)"
    )
    return ROOT / "tests" / "data" / name, SCHEMA_COPIES[name]


def check_workflow(workflow: ConfigWorkflow) -> None:
    """ci/unit_tests/utils.py ``check_workflow(workflow, check_properties=True)``."""
    workflow.initialize()
    missing = workflow.check_properties()
    assert not missing, f"check properties for workflow failed: {missing}"
    workflow.run()
    workflow.finalize()


def requirement_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file, names lower case."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path}: {line!r} is not pinned with =="
            pins[name.strip().lower()] = version.strip()
    return pins


# ---- verify_bundle_directory: required and preferred files; models/ in a fresh clone; large_files.yml --------------


def test_required_and_preferred_files() -> None:
    assert directory_problems(ROOT) == []


def test_models_folder_ships_in_a_fresh_clone() -> None:
    """models/README.md is tracked (a fresh clone has models/), and weights there are kept out of git."""
    readme = ROOT / "models" / "README.md"
    assert readme.is_file(), f"{readme} is missing: a fresh clone would have no models/ folder"
    tracked = subprocess.run(["git", "ls-files", "models"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert tracked.stdout.split() == ["models/README.md"], f"git tracks in models/: {tracked.stdout.split()}"
    for path in [entry["path"] for entry in large_file_entries(ROOT)] + ["models/checkpoint_epoch=1.pt"]:
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert ignored.returncode == 0, f"{path} is not ignored by .gitignore: weights must not be committed"


def test_large_files_entries_are_what_the_zoo_download_takes() -> None:
    """ci/utils.py ``download_large_files``: each entry, as the zoo edits it, is a valid ``download_url`` call."""
    entries = large_file_entries(ROOT)
    assert {e["path"] for e in entries} >= {"models/model.pt"}
    signature = inspect.signature(download_url)
    unreleased = []
    for entry in entries:
        assert set(entry) <= {"path", "url", "hash_val", "hash_type"}, f"large_files.yml: unknown keys in {entry}"
        assert entry["path"].startswith("models/"), f"large_files.yml: {entry['path']} is not under models/"
        kwargs = {k: v for k, v in entry.items() if v != "" or k not in ("hash_val", "hash_type")}
        kwargs["fuzzy"] = True
        kwargs["filepath"] = str(ROOT / kwargs.pop("path"))
        signature.bind(**kwargs)  # raises TypeError on an argument download_url does not take
        if entry.get("hash_type"):
            assert entry["hash_type"] in {"md5", "sha1", "sha256", "sha512"}, f"large_files.yml: {entry}"
        if entry["url"]:
            assert entry["url"].startswith("https://") and entry.get("hash_val"), (
                f"large_files.yml: {entry['path']} needs an https url and its hash_val"
            )
        else:
            unreleased.append(entry["path"])
    if unreleased:  # the zoo's download step fails on an empty url: the card and models/README.md must say why
        for doc in (ROOT / "models" / "README.md", ROOT / "docs" / "README.md"):
            text = doc.read_text().lower()
            assert "no brats-trained weights" in text, f"{doc} must say that {unreleased} are unreleased"


# ---- the model card: the sections of the zoo's best bundles (brats_mri_segmentation, spleen_ct_segmentation) -------

CARD = ROOT / "docs" / "README.md"
CARD_SECTIONS = [
    "# Model Overview",
    "## Data",
    "## Training configuration",
    "## Performance",
    "## MONAI Bundle Commands",
    "# References",
    "# License",
]


def card_sections() -> dict[str, str]:
    """Each heading of the card (outside code blocks) and its text, up to the next heading of its level or higher."""
    sections: dict[str, str] = {}
    open_headings: list[tuple[int, str]] = []
    in_code = False
    for line in CARD.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if line.startswith("#") and not in_code:
            level = len(line) - len(line.lstrip("#"))
            open_headings = [(lvl, h) for lvl, h in open_headings if lvl < level] + [(level, line.strip())]
            sections[line.strip()] = ""
        else:
            for _, heading in open_headings:
                sections[heading] += line + "\n"
    return sections


def test_model_card_has_the_zoo_sections_each_filled() -> None:
    sections = card_sections()
    missing = [s for s in CARD_SECTIONS if s not in sections]
    assert not missing, f"{CARD} lacks the model card sections {missing}"
    empty = [s for s in CARD_SECTIONS if not sections[s].strip()]
    assert not empty, f"{CARD}: empty sections: {empty}"


def test_empty_eval_metrics_are_explained_by_the_card() -> None:
    if metadata()["eval_metrics"] == {}:
        overview = card_sections()["# Model Overview"]
        assert "`eval_metrics`" in overview, f"{CARD}: the overview must say why eval_metrics is empty"


# ---- verify_version_changes and verify_metadata_format ------------------------------------------------------------


def test_version_is_in_the_changelog() -> None:
    assert version_problems(metadata()) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"version": "0.2.0"}, "version '0.2.0' is missing"),
        ({"changelog": {"0.0.9": "old", "0.1.0": "new"}}, "must list '0.1.0' first"),
        ({"version": "1.0"}, "MAJOR.MINOR.PATCH"),
    ],
)
def test_version_check_names_the_problem(change: dict, expected: str) -> None:
    meta = {"version": "0.1.0", "changelog": {"0.1.0": "new", "0.0.9": "old"}}
    assert version_problems(meta) == []
    assert expected in " ".join(version_problems({**meta, **change}))


def test_metadata_is_valid_against_the_schema_it_names() -> None:
    """ci/verify_bundle.py ``verify_metadata_format``: MONAI's verify_metadata in-process, as the zoo calls it, on
    the schema the metadata's URL names (the offline copy, its md5 checked instead of downloading)."""
    schema, md5 = schema_copy(metadata())
    verify_metadata(meta_file=str(META_FILE), filepath=str(schema), hash_val=md5)


def test_schema_url_of_another_version_is_named() -> None:
    meta = {**metadata(), "schema": SCHEMA_RELEASE + "meta_schema_20990101.json"}
    with pytest.raises(AssertionError, match="meta_schema_20990101.json"):
        schema_copy(meta)


def test_zoo_installs_the_versions_tested_here() -> None:
    """ci/get_bundle_requirements.py installs the metadata's versions: they are requirements.txt's pins and the
    installed ones, and every runtime pin of requirements.txt is in the metadata (else the zoo would not install it)."""
    meta = metadata()
    pins = requirement_pins(ROOT / "requirements.txt")
    declared = {package: meta[key] for key, package in ZOO_DEFAULT_KEYS.items()}
    declared.update({k.lower(): v for k, v in meta["required_packages_version"].items()})
    for package, version in declared.items():
        assert pins.get(package) == version, (
            f"metadata.json has {package} {version}, requirements.txt {pins.get(package)}"
        )
        installed = importlib.metadata.version(package).split("+")[0]
        assert installed == version, f"metadata.json has {package} {version}, this environment {installed}"
    runtime = set(pins) - NOT_RUNTIME
    assert runtime <= set(declared), f"requirements.txt pins not in metadata.json: {sorted(runtime - set(declared))}"


# ---- verify_bundle_properties, verify_data_shape and verify_torchscript: MONAI's defaults -------------------------


def test_inference_properties_at_the_zoo_defaults() -> None:
    """verify_bundle_properties' check: create_workflow on inference.yaml, MONAI's meta and inference properties."""
    workflow = create_workflow(
        workflow_type="inference",
        bundle_root=str(ROOT),
        config_file=str(CONFIGS / "inference.yaml"),
        logging_file=str(CONFIGS / "logging.conf"),
        meta_file=str(META_FILE),
    )
    workflow.properties = {**MetaProperties, **InferProperties}
    assert not workflow.check_properties()


def test_verify_net_in_out_at_the_zoo_defaults() -> None:
    """ci/verify_bundle.py ``verify_data_shape``, the same call: no n, p or any (MONAI's defaults, n = 1), no
    overrides, so the paper-sized generator on the smallest declared shape."""
    inference = str(CONFIGS / "inference.yaml")
    verify_net_in_out(net_id="network_def", meta_file=str(META_FILE), config_file=inference, bundle_root=str(ROOT))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_declared_shapes_are_what_both_networks_accept(n: int) -> None:
    """Every n of the declared patterns runs both networks (train mode, as in training) and gives the declared
    output shapes; the patterns are read as verify_net_in_out reads them."""
    meta = metadata()
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    shape = _get_fake_spatial_shape(image["spatial_shape"], n=n)
    assert _get_fake_spatial_shape(pred["spatial_shape"], n=n) == shape
    torch.manual_seed(0)
    generator = Vox2VoxGenerator(features=2).train()
    assert generator(torch.rand(1, image["num_channels"], *shape)).shape == (1, pred["num_channels"], *shape)
    d_format = meta["discriminator_data_format"]
    d_in, d_out = d_format["inputs"]["image"], d_format["outputs"]["pred"]
    d_shape = _get_fake_spatial_shape(d_in["spatial_shape"], n=n)
    logits = Vox2VoxDiscriminator(in_channels=d_in["num_channels"], channels=2).train()(torch.rand(1, 8, *d_shape))
    assert logits[-1].shape == (1, d_out["num_channels"], *_get_fake_spatial_shape(d_out["spatial_shape"], n=n))


def test_ckpt_export_at_the_zoo_defaults(tmp_path: Path) -> None:
    """verify_torchscript: ckpt_export by scripting the paper-sized network_def, weights as the zoo's
    ``_produce_fake_weights`` makes them for a bundle without a models/model.pt (the network's initial weights)."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.yaml"))
    parser.read_meta(str(META_FILE))
    weights = tmp_path / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), weights)
    exported = tmp_path / "verify_model.ts"
    # ci/verify_bundle.py ``verify_torchscript``: the same call (scripting, no input shape)
    ckpt_export(
        net_id="network_def",
        filepath=str(exported),
        ckpt_file=str(weights),
        meta_file=str(META_FILE),
        config_file=str(CONFIGS / "inference.yaml"),
        bundle_root=str(ROOT),
    )
    weights.unlink()  # 600 MB each
    torch.jit.load(str(exported))


# ---- ci/unit_tests: train one epoch with overrides, then evaluate, then infer -------------------------------------


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six demo cases at 4 mm in the BraTS 2021 layout (the zoo's tests make random ones; ours must be valid)."""
    out = tmp_path_factory.mktemp("zoo_data") / "brats"
    make_dataset(out, num_cases=6, seed=5, spacing=4.0, quiet=True)
    return out


@pytest.fixture(scope="module")
def zoo_trained(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zoo's ``test_train_eval_config``: the datalist by the bundle's own script, as the zoo's BraTS test makes
    it, then a training workflow of one epoch and an evaluation workflow (train.yaml + evaluate.yaml, type train),
    each with the overrides as keyword arguments. Returns the bundle_root they wrote to."""
    root = tmp_path_factory.mktemp("zoo_run")
    datalist = root / "datalist.json"
    run(
        [
            sys.executable,
            str(ROOT / "scripts" / "prepare_datalist.py"),
            "--dataset-dir",
            str(dataset_dir),
            "--output",
            str(datalist),
            "--num-folds",
            "3",
        ]
    )
    override = {
        "bundle_root": str(root),
        "dataset_dir": str(dataset_dir),
        "datalist_file": str(datalist),
        "max_epochs": 1,
        "val_interval": 1,
        "batch_size": 2,
        **TINY_MODEL,
    }
    common = {"logging_file": str(CONFIGS / "logging.conf"), "meta_file": str(META_FILE)}
    train = str(CONFIGS / "train.yaml")
    check_workflow(ConfigWorkflow(workflow_type="train", config_file=train, **common, **override))
    assert (root / "models" / "model.pt").is_file()
    # "override train.json, thus set the workflow to 'train' rather than 'eval'" (the zoo's comment)
    evaluate = [train, str(CONFIGS / "evaluate.yaml")]
    check_workflow(ConfigWorkflow(workflow_type="train", config_file=evaluate, **common, **override))
    assert (root / "eval" / "metrics.csv").is_file()
    return root


def test_train_then_evaluate_as_the_zoo_unit_tests(zoo_trained: Path) -> None:
    summary = json.loads((zoo_trained / "eval" / "summary.json").read_text())
    assert summary, "evaluation wrote an empty summary"


def test_infer_as_the_zoo_unit_tests(zoo_trained: Path, dataset_dir: Path, tmp_path: Path) -> None:
    """The zoo's ``test_infer_config``: the inference workflow with overrides, on the trained model."""
    override = {
        "bundle_root": str(zoo_trained),
        "dataset_dir": str(dataset_dir),
        "output_dir": str(tmp_path),
        **TINY_MODEL,
    }
    check_workflow(
        ConfigWorkflow(
            workflow_type="infer",
            config_file=str(CONFIGS / "inference.yaml"),
            logging_file=str(CONFIGS / "logging.conf"),
            meta_file=str(META_FILE),
            **override,
        )
    )
    cases = sorted(p.name for p in dataset_dir.iterdir())
    assert sorted(p.name for p in tmp_path.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in cases]


# ---- the pre-commit hooks of the zoo's .pre-commit-config.yaml, on the bundle's files and the repository's ---------


def bundle_files() -> list[tuple[str, int]]:
    """(path, git mode) of the files the bundle zip holds, less the large files: what a zoo pull request adds."""
    return bundle_zip.bundle_files(ROOT)


#: byte-identical copies of files published elsewhere (tests/data/SOURCES.md): kept as published, not reformatted
VERBATIM = ("tests/data/meta_schema_",)


def checked_files() -> list[tuple[str, int]]:
    """The pre-commit hooks' files: those of the bundle, and as our own habit every other tracked file too."""
    files = bundle_zip.tracked_files(ROOT)  # a tracked file missing from the work tree: other tests name it
    return [(p, mode) for p, mode in files if not p.startswith(VERBATIM) and (ROOT / p).is_file()]


def is_text(path: Path) -> bool:
    """identify's notion of text, as pre-commit types files: no NUL byte and decodable."""
    data = path.read_bytes()
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def hook_result(module: str, argv: list[str], cwd: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    hook = __import__(f"pre_commit_hooks.{module}", fromlist=["main"])
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        code = hook.main(argv)
    finally:
        os.chdir(previous)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def selected(kind: str) -> list[str]:
    files = checked_files()
    suffixes = {"yaml": (".yaml", ".yml"), "toml": (".toml",), "json": (".json",), "python": (".py",)}
    if kind == "all":
        return [p for p, _ in files]
    if kind == "text":
        return [p for p, _ in files if is_text(ROOT / p)]
    if kind == "executable":
        return [p for p, mode in files if mode & 0o111 and is_text(ROOT / p)]
    return [p for p, _ in files if p.endswith(suffixes[kind])]


HOOKS = [  # (hook id, module, arguments, files pre-commit passes)
    ("check-added-large-files", "check_added_large_files", [f"--maxkb={MAX_KB}", "--enforce-all"], "all"),
    ("check-yaml", "check_yaml", [], "yaml"),
    ("check-docstring-first", "check_docstring_first", [], "python"),
    ("check-executables-have-shebangs", "check_executables_have_shebangs", [], "executable"),
    ("check-toml", "check_toml", [], "toml"),
    ("check-case-conflict", "check_case_conflict", [], "all"),
    ("detect-private-key", "detect_private_key", [], "text"),
    ("pretty-format-json", "pretty_format_json", ["--no-sort-keys", "--indent=4"], "json"),  # reports; --autofix fixes
    ("mixed-line-ending", "mixed_line_ending", ["--fix=no"], "text"),
]


@pytest.mark.parametrize(("hook_id", "module", "args", "kind"), HOOKS, ids=[h[0] for h in HOOKS])
def test_pre_commit_hook(hook_id: str, module: str, args: list[str], kind: str, capsys: pytest.CaptureFixture) -> None:
    files = selected(kind)
    if not files:
        pytest.skip(f"no {kind} files")
    code, output = hook_result(module, [*args, *files], ROOT, capsys)
    assert code == 0, f"pre-commit hook {hook_id} fails on the bundle:\n{output}"


@pytest.mark.parametrize(
    ("hook_id", "module", "exclude"),
    [
        ("end-of-file-fixer", "end_of_file_fixer", ()),
        ("trailing-whitespace", "trailing_whitespace_fixer", (".ts", ".pt")),
    ],
)
def test_pre_commit_fixer_changes_nothing(
    hook_id: str, module: str, exclude: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The two hooks that always fix in place run on copies: they must find nothing to fix."""
    files = [p for p in selected("text") if not p.endswith(exclude)]
    for path in files:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / path, tmp_path / path)
    code, output = hook_result(module, files, tmp_path, capsys)
    assert code == 0, f"pre-commit hook {hook_id} would change:\n{output}"


def test_no_bundle_file_exceeds_the_size_limit() -> None:
    """Said plainly (the hook above counts KB rounded up): every file a pull request adds is <= 1024 KB."""
    sizes = {p: (ROOT / p).stat().st_size for p, _ in checked_files()}
    too_large = {p: size for p, size in sizes.items() if size > MAX_KB * 1024}
    assert not too_large, f"files over {MAX_KB} KB (the zoo's pre-commit limit): {too_large}"


# ---- the zip the zoo distributes, unpacked by monai.bundle download, inferring by bundle_root alone --------------


@pytest.fixture(scope="module")
def unpacked(zoo_trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """make bundle-zip with the trained model.pt as the release's large file, then ``monai.bundle download --url``."""
    dist = tmp_path_factory.mktemp("dist")
    build = [sys.executable, str(ROOT / "scripts" / "bundle_zip.py"), "--output-dir", str(dist)]
    build += ["--weights-dir", str(zoo_trained)]
    run(build)
    [archive] = dist.glob("*.zip")
    assert archive.name == f"{bundle_zip.BUNDLE_NAME}_v{metadata()['version']}.zip"
    first = archive.read_bytes()
    run(build)  # the same files again
    assert archive.read_bytes() == first, "the same files gave a different zip"
    members = {info.filename: info for info in zipfile.ZipFile(archive).infolist()}
    assert all(n.startswith(f"{bundle_zip.BUNDLE_NAME}/") for n in members), "the zip must have one base folder"
    for path, mode in bundle_files():  # scripts keep their executable bit in the zip (unzip restores it; MONAI not)
        executable = members[f"{bundle_zip.BUNDLE_NAME}/{path}"].external_attr >> 16 & stat.S_IXUSR
        assert bool(executable) == bool(mode & 0o111), path
    bundles = tmp_path_factory.mktemp("bundles")
    run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "download",
            "--name",
            bundle_zip.BUNDLE_NAME,
            "--url",
            archive.as_uri(),
            "--bundle_dir",
            str(bundles),
        ],
        cwd=bundles,
    )
    return bundles / bundle_zip.BUNDLE_NAME


def test_bundle_zip_holds_the_bundle_and_the_weights(unpacked: Path, zoo_trained: Path) -> None:
    assert directory_problems(unpacked) == []
    assert (unpacked / "models" / "README.md").is_file()
    digest = hashlib.md5((unpacked / "models" / "model.pt").read_bytes()).hexdigest()
    assert digest == hashlib.md5((zoo_trained / "models" / "model.pt").read_bytes()).hexdigest()
    assert version_problems(metadata(unpacked)) == []
    assert not (unpacked / "tests").exists() and not (unpacked / ".ci").exists()
    expected = {p for p, _ in bundle_files()} | {"models/model.pt"}
    held = {str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file()}
    assert held == expected


def test_unpacked_bundle_infers_by_its_bundle_root_alone(unpacked: Path, dataset_dir: Path, tmp_path: Path) -> None:
    """From another folder, without this repository on the path: the configs, code and weights of the zip."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "predictions"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "inference",
        "--bundle_root",
        str(unpacked),
        "--config_file",
        str(unpacked / "configs" / "inference.yaml"),
        "--meta_file",
        str(unpacked / "configs" / "metadata.json"),
        "--logging_file",
        str(unpacked / "configs" / "logging.conf"),
        "--dataset_dir",
        str(dataset_dir),
        "--output_dir",
        str(out),
        *cli_overrides(TINY_MODEL),
    ]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={**env, "CI": "true"})
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    cases = sorted(p.name for p in dataset_dir.iterdir())
    assert sorted(p.name for p in out.iterdir()) == [f"{c}.nii.gz" for c in cases]
    for case in cases:
        assert nib.load(out / f"{case}.nii.gz").shape == nib.load(dataset_dir / case / f"{case}_t1.nii.gz").shape
    # and the code it ran was the zip's: from that folder, with that environment, this repository's is not importable
    probe = subprocess.run([sys.executable, "-c", "import bundle"], cwd=tmp_path, capture_output=True, env=env)
    assert probe.returncode != 0, "this repository's bundle package is importable without the bundle_root"
