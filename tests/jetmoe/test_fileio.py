"""The output rule and atomic writes (jetmoe/fileio.py): nothing the user owns is lost, nothing half-written stays."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from jetmoe.errors import OutputError
from jetmoe.fileio import atomic_directory, atomic_write_text, check_output, clean_stale


def test_an_output_never_overwrites_an_input(tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / "sub").mkdir(parents=True)
    for target in (ckpt, ckpt / "sub", tmp_path):  # the input itself, inside it, a folder holding it
        with pytest.raises(OutputError, match="would overwrite the input"):
            check_output(target, kind="dir", overwrite=True, inputs=[ckpt])


def test_never_the_current_folder_or_a_parent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for target in (".", "..", tmp_path):
        with pytest.raises(OutputError, match="current folder or one of its parents"):
            check_output(target, kind="dir", overwrite=True)


def test_overwrite_replaces_only_what_the_command_wrote(tmp_path):
    mine = tmp_path / "export"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        check_output(mine, kind="dir", overwrite=False, marker="export.json")
    with pytest.raises(OutputError, match="holds files but no export.json"):
        check_output(mine, kind="dir", overwrite=True, marker="export.json")
    (mine / "export.json").write_text("{}")
    assert check_output(mine, kind="dir", overwrite=True, marker="export.json") == mine
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", kind="dir", overwrite=True, marker="x") == tmp_path / "empty"


def test_kinds_are_not_swapped(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    with pytest.raises(OutputError, match="is not a folder; refusing to replace it with one"):
        check_output(tmp_path / "a_file", kind="dir", overwrite=True)
    with pytest.raises(OutputError, match="is a folder; refusing to replace it with a file"):
        check_output(tmp_path / "a_dir", kind="file", overwrite=True)
    with pytest.raises(OutputError, match="a_file is not a folder"):
        check_output(tmp_path / "a_file" / "out", kind="dir", overwrite=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_parent_is_refused_up_front(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="is not writable"):
        check_output(locked / "report.json", kind="file", overwrite=False)


def test_disk_full_is_one_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pathlib.Path.write_bytes", full)
    with pytest.raises(OutputError, match="could not write .*report.json: no space left on the device"):
        atomic_write_text(tmp_path / "report.json", "{}")
    monkeypatch.undo()
    with pytest.raises(OutputError, match="no space left on the device"):
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "a").write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_written_files_have_ordinary_modes(tmp_path):
    atomic_write_text(tmp_path / "a.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_temporaries_of_a_killed_process_are_cleaned(tmp_path):
    """A process killed mid-write (SIGKILL: no cleanup runs) leaves its temporary; the next write removes it."""
    script = ("import os, sys, time\nfrom jetmoe.fileio import atomic_directory\n"
              "with atomic_directory(sys.argv[1]) as tmp:\n"
              "    (tmp / 'part').write_text('x'); print(tmp, flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    leftover = proc.stdout.readline().strip()
    proc.kill()
    proc.wait()
    assert os.path.isdir(leftover)
    assert clean_stale(tmp_path, "out") == [tmp_path / os.path.basename(leftover)]
    assert not os.path.exists(leftover)
    with atomic_directory(tmp_path / "out") as tmp:  # and an ordinary write cleans them too
        (tmp / "a").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KiB tmpfs: a real disk-full (needs the right to mount, e.g. root in a container)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here to fill a disk for real: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_leaves_nothing(small_disk, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert subprocess.run([sys.executable, "-m", "jetmoe", "checkpoint", "-o", str(ckpt)], capture_output=True,
                          timeout=300).returncode == 0  # 1.9 MB: more than the disk holds
    for argv in (["checkpoint", "-o", str(small_disk / "ck")], ["export", str(ckpt), "-o", str(small_disk / "onnx")]):
        done = subprocess.run([sys.executable, "-m", "jetmoe", *argv], capture_output=True, text=True, timeout=300)
        assert done.returncode == 1 and "no space left on the device" in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and list(small_disk.iterdir()) == []
