"""flare_nb.outdir: staging folder, atomic rename, manifest-exact --force, abort messages."""
import json

import pytest

from flare_nb.outdir import INCOMPLETE_TAG, MANIFEST, OutputError, StagedOutput, manifest_files, read_manifest


def _stage_files(s: StagedOutput, names):
    st = s.begin()
    assert st.parent == s.out.parent and INCOMPLETE_TAG in st.name
    for n in names:
        (st / n).parent.mkdir(parents=True, exist_ok=True)
        (st / n).write_text(f"new {n}")
    return st


def test_new_folder_is_renamed_into_place(tmp_path):
    s = StagedOutput(tmp_path / "a" / "b" / "out")
    s.check(["x.txt"])
    _stage_files(s, ["x.txt", "sub/y.txt"])
    assert not (tmp_path / "a" / "b" / "out").exists()                # nothing visible before the commit
    assert s.commit() == ["sub/y.txt", "x.txt"]
    out = tmp_path / "a" / "b" / "out"
    assert (out / "x.txt").read_text() == "new x.txt"
    assert read_manifest(out) == {"written_by": "flare-nb", "complete": True, "files": ["sub/y.txt", "x.txt"]}
    assert manifest_files(out) == {out.resolve() / "x.txt", out.resolve() / "sub/y.txt", out.resolve() / MANIFEST}
    assert not list((tmp_path / "a" / "b").glob("*" + INCOMPLETE_TAG + "*"))


def test_abort_leaves_nothing_not_even_created_parents(tmp_path):
    s = StagedOutput(tmp_path / "p" / "q" / "out")
    st = _stage_files(s, ["x.txt"])
    assert st.is_dir()
    msg = s.abort()
    assert "no files were written" in msg and str(tmp_path / "p" / "q" / "out") in msg
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_exactly_the_earlier_runs_files(tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "000_a.png").write_text("old")
    (out / "images" / "001_holiday.jpg").write_text("mine")
    (out / "gone.txt").write_text("old only")
    (out / "notes.txt").write_text("mine")
    (out / MANIFEST).write_text(json.dumps({"complete": True, "files": ["images/000_a.png", "gone.txt"]}))
    with pytest.raises(OutputError, match="already exists and is not empty; pass --force"):
        StagedOutput(out).check(["images/000_a.png"])
    s = StagedOutput(out, force=True)
    s.check(["images/000_a.png", "cameras.json"])
    _stage_files(s, ["images/000_a.png", "cameras.json"])
    s.commit()
    assert (out / "images" / "000_a.png").read_text() == "new images/000_a.png"
    assert (out / "images" / "001_holiday.jpg").read_text() == "mine" and (out / "notes.txt").read_text() == "mine"
    assert not (out / "gone.txt").exists()
    assert read_manifest(out)["files"] == ["cameras.json", "images/000_a.png"]
    assert not list(tmp_path.glob("*" + INCOMPLETE_TAG + "*"))


def test_refusals_before_any_work(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        StagedOutput(tmp_path / "f").check()
    with pytest.raises(OutputError, match="not a folder"):
        StagedOutput(tmp_path / "f" / "out").check()
    photo = tmp_path / "in" / "a.jpg"
    photo.parent.mkdir()
    photo.write_bytes(b"jpg")
    with pytest.raises(OutputError, match="holds the input photo"):
        StagedOutput(tmp_path / "in", force=True, inputs=[photo]).check()
    with pytest.raises(OutputError, match="holds the input photo"):
        StagedOutput(tmp_path, force=True, inputs=[photo]).check()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "cameras.json").write_text("{}")
    with pytest.raises(OutputError, match=r"did not write .*cameras\.json"):
        StagedOutput(mine, force=True).check(["cameras.json"])
    StagedOutput(mine, force=True).check(["points.ply"])                # no clash: allowed beside the user's files
    (mine / MANIFEST).write_text(json.dumps({"complete": False, "files": ["cameras.json"]}))
    with pytest.raises(OutputError, match="INCOMPLETE"):
        StagedOutput(mine).check([])


def test_leftover_staging_folders_are_reported(tmp_path):
    (tmp_path / ("out" + INCOMPLETE_TAG + "abc123")).mkdir()
    s = StagedOutput(tmp_path / "out")
    s.begin()
    assert s.leftovers() == [tmp_path / ("out" + INCOMPLETE_TAG + "abc123")]
    s.abort()
