"""Temporaries a kill leaves in the cache (issue 13, part 4): the index writer's
`.<name>.samidx.tmp-<host>-<pid>-<random>` (~50 MB for the default index) and the model
conversion's `.model.<host>-<pid>.<random>/` (~120 MB) are removed at the next start when their
writer is dead (or, without a live-pid test, by age); a live writer's, another index's, and
unrelated files are kept (the controls)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from samgpu.files import host_tag, owner_tag
from samgpu.sam import SamIndex
from tests._fork import in_child

DEAD_PID = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can have it
OTHER_HOST = "0" * 8 if host_tag() != "0" * 8 else "1" * 8


def _age(path: Path, seconds: float) -> Path:
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)
    return path


def test_index_save_killed_midway_leaves_a_temporary_the_next_save_removes(tmp_path):
    target = tmp_path / "x.samidx"
    index = SamIndex.build([[1, 2, 3]], vocab_size=5, eos_id=0)

    def save_then_die_before_the_rename():  # in a forked child: a real SIGKILL, no cleanup
        os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # in the child only
        index.save(target)

    assert in_child(save_then_die_before_the_rename, timeout=60)[0] == -signal.SIGKILL
    (leftover,) = tmp_path.iterdir()
    assert leftover.name.startswith(".x.samidx.tmp-") and not target.exists()
    SamIndex.build([[1, 2]], vocab_size=5, eos_id=0).save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.samidx"]


def test_which_index_temporaries_are_stale(tmp_path):
    target = tmp_path / "x.samidx"
    names = {
        f".x.samidx.tmp-{host_tag()}-{DEAD_PID}-abcd1234": False,  # dead writer
        f".x.samidx.tmp-{DEAD_PID}": False,  # older untagged name, dead writer
        f".x.samidx.tmp-{owner_tag()}-abcd1234": True,  # this process: in progress
        f".x.samidx.tmp-{host_tag()}-1-abcd1234": True,  # pid 1 is alive
        f".x.samidx.tmp-{OTHER_HOST}-{DEAD_PID}-abcd1234": True,  # another host: by age only
        f".y.samidx.tmp-{host_tag()}-{DEAD_PID}-abcd1234": True,  # another index
        ".x.samidx.tmp-notes": True,  # not a name the writer makes
        "x.samidx.tmp-1": True,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"half an index")
    old_foreign = tmp_path / f".x.samidx.tmp-{OTHER_HOST}-5-zzzz9999"
    old_foreign.write_bytes(b"")
    _age(old_foreign, 2 * 86400)  # another host's, untouched for 2 days: removed
    SamIndex.build([[1, 2]], vocab_size=5, eos_id=0).save(target)
    kept = {p.name for p in tmp_path.iterdir()}
    assert kept == {"x.samidx", *(n for n, keep in names.items() if keep)}


def test_default_index_lookup_removes_dead_builds_even_when_the_cache_is_reused(
    tmp_path, monkeypatch
):
    from samgpu.sam import default

    monkeypatch.setenv("SAMGPU_CACHE", str(tmp_path))
    monkeypatch.setattr(default, "_is_current_default", lambda path, fp: True)
    monkeypatch.setattr(default, "tokenizer_fingerprint", lambda tok: "0123456789abcdef")
    cached = tmp_path / "default-0123456789ab.samidx"
    cached.write_bytes(b"reused as is")
    dead = tmp_path / f".default-fedcba987654.samidx.tmp-{host_tag()}-{DEAD_PID}-abcd1234"
    dead.write_bytes(b"half")
    alive = tmp_path / f".default-fedcba987654.samidx.tmp-{owner_tag()}-abcd1234"
    alive.write_bytes(b"in progress")
    assert default.ensure_default_index(object()) == (cached, None)
    assert not dead.exists() and alive.exists() and cached.exists()


def test_killed_model_conversion_folder_is_removed_at_the_next_start(tmp_path, monkeypatch):
    """_write_atomically's temporary folder, as a kill leaves it (its cleanup never ran), is
    named so that the next start can tell its writer is dead."""
    from samgpu import models

    dest = tmp_path / "model"

    def write(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"x" * 1000)
        raise KeyboardInterrupt  # stands for the kill

    monkeypatch.setattr(models.shutil, "rmtree", lambda *a, **k: None)  # a kill skips cleanup
    with pytest.raises(KeyboardInterrupt):
        models._write_atomically(dest, write)
    monkeypatch.undo()
    (leftover,) = tmp_path.iterdir()
    assert leftover.name.startswith(f".model.{owner_tag()}.")
    assert models.remove_stale_conversions(tmp_path) == []  # its writer (us) is alive: kept
    dead = leftover.rename(leftover.with_name(f".model.{host_tag()}-{DEAD_PID}.abcd1234"))
    old_untagged = tmp_path / ".tokenizer.k3j2h1x9"
    old_untagged.mkdir()
    _age(old_untagged, 2 * 3600)
    fresh_untagged = tmp_path / ".tokenizer.q8w7e6r5"  # may be a conversion in progress
    fresh_untagged.mkdir()
    complete = tmp_path / "tokenizer"
    complete.mkdir()
    removed = models.remove_stale_conversions(tmp_path)
    assert sorted(removed) == sorted([dead, old_untagged])
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh_untagged.name, "tokenizer"]
