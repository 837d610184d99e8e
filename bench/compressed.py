"""Benchmark: the read pass's throughput per core on the same posts as JSON lines, gzip, bz2 and zstd.

    python bench/ingest.py --codecs              # 200,000 posts
    python bench/ingest.py --codecs --sizes 50000

Each file is read in a fresh process, single-threaded, through ingest's own reader (readers.iter_text, the
decompression told from the first bytes) and the Politosphere shape's mapping: the work of one read task on one
core, without Ray. The zstd file is written with a 2^31-byte window, as Pushshift's dumps are. Printed: MB/s of
the file as stored (compressed) and of the decompressed text, posts/s, how far the reader's peak RSS rose above its
size before reading (the decoder's buffers, zstd's window among them), and each codec's time as a ratio of the
plain file's.
"""

from __future__ import annotations

import bz2
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

MB = 2**20


def write_files(n: int, folder: Path) -> dict[str, Path]:
    """The same n Reddit comments (Politosphere's fields) as .jsonl, .jsonl.gz, .bz2 and .zst."""
    import zstandard

    from politune.corpus.generate import generate_corpus

    generate_corpus(n, folder / "corpus", seed=7, fmt="jsonl")
    lines = b"".join(p.read_bytes() for p in sorted((folder / "corpus").rglob("*.jsonl")))
    files = {"jsonl": folder / "comments.jsonl", "gzip": folder / "comments.jsonl.gz",
             "bz2": folder / "comments_2019-05.bz2", "zstd": folder / "RC_2019-05.zst"}
    files["jsonl"].write_bytes(lines)
    files["gzip"].write_bytes(gzip.compress(lines, compresslevel=6))
    files["bz2"].write_bytes(bz2.compress(lines, compresslevel=9))
    params = zstandard.ZstdCompressionParameters.from_level(19, window_log=31)
    with open(files["zstd"], "wb") as f, zstandard.ZstdCompressor(compression_params=params).stream_writer(f) as w:
        w.write(lines)
    return files


def high_water_mb() -> float:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that across exec, so a child
    started by a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def read_one(path: str) -> None:
    """In a child process: read one file as a read task would; print seconds, rows, decompressed bytes, peak RSS."""
    import pyarrow as pa

    from politune.config import SourceConfig
    from politune.ingest.readers import Position, iter_text
    from politune.ingest.shapes import BadRow, RecordMapper

    # the generated corpus holds both shapes' records: each is mapped by its own, as two sources would be
    mappers = {shape: RecordMapper(SourceConfig(name=shape, paths=["x"], shape=shape), 10_000)
               for shape in ("politosphere", "truthsocial")}
    at = Position()
    rss_before = psutil.Process().memory_info().rss / MB
    start = time.perf_counter()
    rows = 0
    with pa.OSFile(path, "rb") as f:
        for _, record, _, error in iter_text(f, path, "jsonl", at):
            if error is None:
                try:
                    mappers["politosphere" if "body" in record else "truthsocial"].to_document(record)
                except BadRow:
                    pass
            rows += 1
    seconds = time.perf_counter() - start
    peak = high_water_mb()
    print(json.dumps({"seconds": seconds, "rows": rows, "text_bytes": at.byte, "rss_growth_mb": peak - rss_before}))


def codecs_bench(n: int, workdir: Path) -> None:
    files = write_files(n, workdir / f"codecs-{n}")
    results = {}
    for codec, path in files.items():
        out = subprocess.run([sys.executable, __file__, path], capture_output=True, text=True, check=True).stdout
        results[codec] = {**json.loads(out), "stored_mb": path.stat().st_size / MB}
    plain = results["jsonl"]
    print(f"\nread pass, one core, {n:,} posts ({plain['text_bytes'] / MB:,.0f} MB of JSON lines):")
    print(f"  {'codec':<6} {'stored MB':>9} {'MB/s stored':>11} {'MB/s text':>9} {'posts/s':>9} {'RSS growth MB':>13} "
          f"{'time vs jsonl':>13}")
    for codec, r in results.items():
        assert r["rows"] == plain["rows"] and r["text_bytes"] == plain["text_bytes"], (codec, r, plain)
        print(f"  {codec:<6} {r['stored_mb']:9.1f} {r['stored_mb'] / r['seconds']:11.1f} "
              f"{r['text_bytes'] / MB / r['seconds']:9.1f} {r['rows'] / r['seconds']:9,.0f} {r['rss_growth_mb']:13.0f} "
              f"{r['seconds'] / plain['seconds']:13.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    read_one(sys.argv[1])
