"""Run directories: creation, checksummed artifacts, verification and clear errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from sdift_prob.errors import FormatError, InputError
from sdift_prob.run import (
    MANIFEST,
    RUN_FORMAT_VERSION,
    add_artifact,
    create_run,
    manifest_digest,
    new_run,
    read_manifest,
    seal_run,
    section_files,
    section_info,
)


def text_writer(content: str):
    def write(path: Path) -> None:
        path.write_text(content)

    return write


def test_create_run_refuses_existing_unless_overwrite(tmp_path):
    run = create_run(tmp_path / "run")
    manifest = read_manifest(run)
    assert manifest["sdift_run_format"] == RUN_FORMAT_VERSION
    assert manifest["sections"] == {}
    assert set(manifest["versions"]) >= {"sdift-prob", "jax", "equinox", "numpyro"}
    with pytest.raises(InputError, match="run_dir"):
        create_run(run)
    add_artifact(run, "ftm", {"a.txt": text_writer("x")}, {"k": 1})
    create_run(run, overwrite=True)
    assert read_manifest(run)["sections"] == {}
    assert not (run / "a.txt").exists()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(InputError, match="folder"):
        create_run(tmp_path / "file", overwrite=True)
    with pytest.raises(InputError, match="does not exist"):
        create_run(tmp_path / "missing" / "run")


def test_add_artifact_records_checksums_and_info(tmp_path):
    run = create_run(tmp_path / "run")
    digests = add_artifact(run, "ftm", {"a.txt": text_writer("alpha"), "b.bin": text_writer("beta")},
                           {"config": {"width": 64}, "ranks": [8, 8]})
    assert digests["a.txt"] == hashlib.sha256(b"alpha").hexdigest()
    assert (run / "b.bin").read_text() == "beta"
    assert section_info(run, "ftm") == {"config": {"width": 64}, "ranks": [8, 8]}
    assert section_files(run, "ftm") == {"a.txt": run / "a.txt", "b.bin": run / "b.bin"}
    add_artifact(run, "prior", {"prior.json": text_writer("{}")}, {"steps": 10})
    assert sorted(read_manifest(run)["sections"]) == ["ftm", "prior"]
    # no temporary files are left behind
    assert sorted(p.name for p in run.iterdir()) == ["a.txt", "b.bin", MANIFEST, "prior.json"]


def test_add_artifact_refuses_bad_input(tmp_path):
    run = create_run(tmp_path / "run")
    add_artifact(run, "ftm", {"a.txt": text_writer("alpha")}, {})
    with pytest.raises(InputError, match="section"):
        add_artifact(run, "ftm", {"a.txt": text_writer("again")}, {})
    assert (run / "a.txt").read_text() == "alpha"
    with pytest.raises(InputError, match="belongs to 'ftm'"):
        add_artifact(run, "prior", {"a.txt": text_writer("clash")}, {})
    for bad_name in ("sub/x.txt", MANIFEST, ".hidden", ""):
        with pytest.raises(InputError, match="files"):
            add_artifact(run, "prior", {bad_name: text_writer("x")}, {})
    with pytest.raises(InputError, match="info"):
        add_artifact(run, "prior", {"p.txt": text_writer("x")}, {"value": float("nan")})
    with pytest.raises(InputError, match="info"):
        add_artifact(run, "prior", {"p.txt": text_writer("x")}, {"value": object()})
    with pytest.raises(InputError, match="section"):
        add_artifact(run, "bad name", {"p.txt": text_writer("x")}, {})
    with pytest.raises(InputError, match="nothing written"):
        add_artifact(run, "prior", {"p.txt": lambda path: None}, {})
    assert "prior" not in read_manifest(run)["sections"]


def test_failed_writer_changes_nothing(tmp_path):
    run = create_run(tmp_path / "run")
    add_artifact(run, "ftm", {"a.txt": text_writer("old")}, {"v": 1})

    def broken(path: Path) -> None:
        path.write_text("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        add_artifact(run, "ftm", {"a.txt": text_writer("new"), "b.txt": broken}, {"v": 2}, overwrite=True)
    assert (run / "a.txt").read_text() == "old"
    assert not (run / "b.txt").exists()
    assert section_info(run, "ftm") == {"v": 1}
    assert sorted(p.name for p in run.iterdir()) == ["a.txt", MANIFEST]


def test_overwriting_a_section_replaces_its_files(tmp_path):
    run = create_run(tmp_path / "run")
    add_artifact(run, "ftm", {"a.txt": text_writer("old"), "old.txt": text_writer("x")}, {"v": 1})
    add_artifact(run, "ftm", {"a.txt": text_writer("new")}, {"v": 2}, overwrite=True)
    assert (run / "a.txt").read_text() == "new"
    assert not (run / "old.txt").exists()
    assert section_info(run, "ftm") == {"v": 2}


def test_new_run_is_all_or_nothing(tmp_path):
    target = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with new_run(target) as tmp:
            add_artifact(tmp, "ftm", {"a.txt": text_writer("x")}, {})
            raise RuntimeError("interrupted")
    assert not target.exists()
    with new_run(target) as tmp:
        add_artifact(tmp, "ftm", {"a.txt": text_writer("x")}, {})
    assert section_info(target, "ftm") == {}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_tampered_or_missing_files_are_detected(tmp_path):
    run = create_run(tmp_path / "run")
    add_artifact(run, "ftm", {"a.txt": text_writer("alpha"), "b.txt": text_writer("beta")}, {})
    (run / "b.txt").write_text("BETA")
    with pytest.raises(FormatError, match=r"b\.txt.*checksum"):
        read_manifest(run)
    read_manifest(run, verify=False)  # reading without verification still works
    (run / "b.txt").write_text("beta")
    (run / "a.txt").unlink()
    with pytest.raises(FormatError, match="'a.txt' of section 'ftm' is missing"):
        section_info(run, "ftm")


def test_manifest_problems_are_format_errors(tmp_path):
    run = create_run(tmp_path / "run")
    path = run / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["sdift_run_format"] = RUN_FORMAT_VERSION + 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match=f"version {RUN_FORMAT_VERSION + 1}"):
        read_manifest(run)
    path.write_text("{not json")
    with pytest.raises(FormatError, match="corrupt manifest"):
        read_manifest(run)
    path.write_text(json.dumps({"something": "else"}))
    with pytest.raises(FormatError, match="sdift_run_format"):
        read_manifest(run)
    path.unlink()
    with pytest.raises(FormatError, match="manifest.json is missing"):
        read_manifest(run)
    with pytest.raises(InputError, match="run_dir"):
        read_manifest(tmp_path / "nowhere")


def test_missing_section_is_a_format_error(tmp_path):
    run = create_run(tmp_path / "run")
    with pytest.raises(FormatError, match="no 'ftm' section"):
        section_info(run, "ftm")
    from sdift_prob.ftm import load_run

    with pytest.raises(FormatError, match="no 'ftm' section"):
        load_run(run)


# --- sealed manifests (issue 16 item 4) ------------------------------------------------------------


def _unsealed(run: Path) -> dict:
    """Strip the manifest's own checksum, as manifests written before it existed look."""
    manifest = json.loads((run / MANIFEST).read_text())
    manifest.pop("manifest_sha256")
    (run / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def test_every_written_manifest_is_sealed(tmp_path):
    run = create_run(tmp_path / "run")
    assert json.loads((run / MANIFEST).read_text())["manifest_sha256"]
    add_artifact(run, "ftm", {"a.txt": text_writer("alpha")}, {"k": 1})
    manifest = json.loads((run / MANIFEST).read_text())
    assert manifest["manifest_sha256"] == manifest_digest(manifest)
    with new_run(tmp_path / "other") as tmp:
        add_artifact(tmp, "ftm", {"a.txt": text_writer("x")}, {})
    read_manifest(tmp_path / "other")


def test_a_manifest_without_its_checksum_is_refused_with_the_way_to_seal_it(tmp_path):
    run = create_run(tmp_path / "run")
    add_artifact(run, "ftm", {"a.txt": text_writer("alpha")}, {"omega": 20.0})
    _unsealed(run)
    with pytest.raises(FormatError, match="no manifest_sha256") as err:
        section_info(run, "ftm")
    assert f"sdift seal {run}" in str(err.value) and "seal_run" in str(err.value)
    read_manifest(run, verify=False)  # reading it unverified, on purpose, still works
    digest = seal_run(run)
    assert read_manifest(run)["manifest_sha256"] == digest
    assert section_info(run, "ftm") == {"omega": 20.0}
    assert seal_run(run) == digest  # sealing a sealed manifest changes nothing


def test_seal_run_refuses_damaged_or_edited_runs(tmp_path):
    run = create_run(tmp_path / "run")
    add_artifact(run, "ftm", {"a.txt": text_writer("alpha")}, {"omega": 20.0})
    # a sealed manifest edited by hand is not blessed by sealing it again
    manifest = json.loads((run / MANIFEST).read_text())
    manifest["sections"]["ftm"]["info"]["omega"] = 30.0
    (run / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match="changed after it was written"):
        seal_run(run)
    # an unsealed manifest whose files do not match is not sealed
    manifest["sections"]["ftm"]["info"]["omega"] = 20.0
    manifest.pop("manifest_sha256")
    (run / MANIFEST).write_text(json.dumps(manifest))
    (run / "a.txt").write_text("ALPHA")
    with pytest.raises(FormatError, match="checksum mismatch"):
        seal_run(run)
    assert "manifest_sha256" not in json.loads((run / MANIFEST).read_text())
    with pytest.raises(InputError, match="run_dir"):
        seal_run(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["ocean", "fluid2d"])
def test_shipped_bundles_are_sealed_and_an_edited_omega_is_refused(name, tmp_path):
    import shutil

    from sdift_prob import pretrained
    from sdift_prob.ftm import load_run

    shipped = pretrained.path(name) / "run"
    manifest = json.loads((shipped / MANIFEST).read_text())
    assert manifest["manifest_sha256"] == manifest_digest(manifest)
    read_manifest(shipped)
    run = tmp_path / "run"
    shutil.copytree(shipped, run)
    manifest["sections"]["ftm"]["info"]["config"]["omega"] = 30.0
    (run / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(FormatError, match="changed after it was written"):
        load_run(run)
    manifest.pop("manifest_sha256")  # and with the checksum removed as well
    (run / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(FormatError, match="no manifest_sha256"):
        load_run(run)


def test_sdift_seal_command(tmp_path, capsys):
    from sdift_prob import cli

    run = create_run(tmp_path / "run")
    add_artifact(run, "ftm", {"a.txt": text_writer("alpha")}, {})
    _unsealed(run)
    assert cli.main(["seal", str(run), "--json-summary"]) == 0
    out, err = capsys.readouterr()
    assert f"sealed {run}" in err
    assert json.loads(out) == {"run_dir": str(run), "manifest_sha256": read_manifest(run)["manifest_sha256"]}
    assert cli.main(["seal", str(tmp_path / "nowhere")]) == 1
    assert "RUN_DIR: expected an existing run directory" in capsys.readouterr().err
