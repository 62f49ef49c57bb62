"""Records and their files: the record schema, checksummed JSONL, atomic writes, the `done` marker.

Imports neither torch nor the methods, so tables can be built from records alone (`benchmark.reporting.tables`).

A run folder holds `records.jsonl` (one JSON object a line, each carrying `_sha`, the checksum of its own
content) and, once every requested evaluation is recorded, `done`: the number of records and the sha256 of
`records.jsonl`. `verify_done` trusts a run only when both still match.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from pathlib import Path

from benchmark.errors import RunError
from benchmark.scoring.declarations import METRICS

#: Version of the evaluation protocol a record was made under; `collect` refuses to mix versions.
#: 1: realism against the test split's own real images, 6-subject test set, last checkpoint.
#: 2: realism against a disjoint `ref` split of other subjects, 30 test subjects, final weights saved before
#:    evaluation, SDEdit strength at exactly t0 * T, CycleGAN budgets in iterations, subject ids in records.
#: 3: checkpoints selected on the whole validation split (every source, every subject) at the default knob value, by
#:    one rule (realism) for every learned method; a knob grid extended on validation where its choice is at an edge.
PROTOCOL_VERSION = 3

#: Every record has these keys (None when not computed): the point, then every declared metric, then cost.
RECORD_KEYS = ("method", "setting", "dataset", "preset", "task", "seed", "source", "target", "knob", "knob_value",
               "n_images", *METRICS, "nfe", "sec_per_image", "train_sec", "n_params", "peak_rss_mb")
TMP_MARK = ".tmp-"


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file next to it (same file system), fsync, rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries of `atomic_write` (and checkpoint writes) left in `folder` by dead processes."""
    removed = []
    for name in glob.glob(str(Path(folder) / f".*{TMP_MARK}*")):
        pid = name.rsplit(TMP_MARK, 1)[-1].split(".")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            Path(name).unlink(missing_ok=True)
            removed.append(Path(name))
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def record_sha(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "_sha"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def seal(record: dict) -> dict:
    """`record` with its `_sha`."""
    out = {k: v for k, v in record.items() if k != "_sha"}
    out["_sha"] = record_sha(out)
    return out


def read_records(path: Path) -> list[dict]:
    """Records of one run (`records.jsonl`, or an archived `records.jsonl.gz`); a line that fails its own checksum
    (edited by hand) is an error."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    if path.suffix == ".gz":  # an archived run (`benchmark.reporting.archive`)
        import gzip

        text = gzip.decompress(path.read_bytes()).decode()
    else:
        text = path.read_text()
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunError(f"{path}:{i}: not valid JSON ({exc.msg}); restore the file or delete the run "
                           "folder") from exc
        if rec.get("_sha") != record_sha(rec):
            raise RunError(f"{path}:{i}: record checksum mismatch (edited by hand?); restore the file or delete the "
                           "run folder to recompute it")
        records.append(rec)
    return records


def of_split(records: list[dict], split: str = "test") -> list[dict]:
    """The records of one split (test records may predate the field; validation records carry `split = "val"`)."""
    return [r for r in records if r.get("split", "test") == split]


def records_text(records: list[dict]) -> str:
    return "".join(json.dumps(r, default=str) + "\n" for r in records)


def write_records(path: Path, records: list[dict]) -> None:
    atomic_write(path, records_text(records))


def write_done(folder: Path, records: list[dict]) -> None:
    """Mark a run complete: the record count and the checksum of `records.jsonl` as written."""
    text = records_text(records)
    atomic_write(Path(folder) / "done", json.dumps({"n_records": len(records), "finished": time.time(),
                                                    "records_sha256": hashlib.sha256(text.encode()).hexdigest()}))


def verify_done(folder: Path) -> str | None:
    """None when `folder/done` vouches for the records on disk, else why not (one line)."""
    folder = Path(folder)
    done, path = folder / "done", folder / "records.jsonl"
    if not done.is_file():
        return "no done marker"
    if not (folder / "config.json").is_file():
        return "config.json is missing"
    try:
        marker = json.loads(done.read_text())
    except ValueError:
        return "the done marker is not valid JSON"
    if not path.is_file():
        return "records.jsonl is missing"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if marker.get("records_sha256") != digest:
        return "records.jsonl does not match the checksum in done"
    return None
