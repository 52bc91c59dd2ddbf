"""tinylm.io: atomic writes leave no partial files; out-dir checks create nothing."""

import json

import pytest

from tinylm import io
from tinylm.errors import ConfigError


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "x.json"
    io.write_json(path, {"a": 1})
    io.write_json(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_failed_write_leaves_nothing(tmp_path):
    class Boom(Exception):
        pass

    class Bad:
        def __iter__(self):
            raise Boom

    with pytest.raises(Boom):
        io.write_jsonl(tmp_path / "m.jsonl", Bad())
    assert list(tmp_path.iterdir()) == []


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "m.jsonl"
    io.write_jsonl(path, [{"step": 0}])
    io.append_jsonl(path, {"step": 1, "val_loss": 2.5})
    assert io.read_jsonl(path) == [{"step": 0}, {"step": 1, "val_loss": 2.5}]


def test_jsonl_strict_refuses_any_bad_line_lenient_only_a_cut_last_one():
    def parse(data: bytes, lenient: bool):
        records = []
        return io.parse_jsonl(data.splitlines(keepends=True), records.append,
                              lenient=lenient), records

    whole = b'{"step": 0}\n\n  \n{"step": 1}\n'
    assert parse(whole, False) == parse(whole, True) == (False, [{"step": 0}, {"step": 1}])
    cut = whole + b'{"step": 2, "lo'  # a run still writing, or killed mid-line
    assert parse(cut, True) == (True, [{"step": 0}, {"step": 1}])
    with pytest.raises(io.JsonlError, match="line 5 is not JSON") as e:
        parse(cut, False)
    assert e.value.line == 5
    with pytest.raises(io.JsonlError) as e:  # followed by a record: damage, not a write
        parse(b'{"step": 0}\nnot json\n\n{"step": 1}\n', True)
    assert e.value.line == 2
    with pytest.raises(ValueError):  # not UTF-8: refused when strict, replaced when lenient
        parse(b'"\xff"\n', False)
    assert parse(b'"\xff"\n', True) == (False, ["\ufffd"])


def test_check_out_dir_refuses_files_and_creates_nothing(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        io.check_out_dir(f)
    with pytest.raises(ConfigError, match="not a directory"):
        io.check_out_dir(f / "sub")
    io.check_out_dir(tmp_path / "new" / "dir")
    assert not (tmp_path / "new").exists()
    assert io.make_out_dir(tmp_path / "new" / "dir").is_dir()


def test_written_files_follow_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        io.atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
