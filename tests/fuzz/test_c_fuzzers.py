"""Bounded libFuzzer runs of the C data plane under AddressSanitizer and
UndefinedBehaviorSanitizer (longer runs: scripts/fuzz)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    shutil.which("clang") is None,
    reason="clang is not installed (scripts/test installs Debian's clang when run as root)",
)


def _seed_corpus(directory: Path) -> None:
    directory.mkdir()
    rtp = struct.pack("!BBHII", 0x80, 0, 65535, 0xFFFFFF60, 0x1234) + b"\xff" * 160
    dtmf = struct.pack("!BBHII", 0x80, 101, 1, 0, 0x1234) + b"\x05\x0a\x00\xa0"
    ext = struct.pack("!BBHII", 0x90 | 0x20 | 1, 0x80, 2, 160, 0x1234) + b"\0\0\0\1"
    ext += struct.pack("!HH", 0xBEDE, 1) + b"\x10\xaa\0\0" + b"pay" + b"\x02\x02"
    rr = struct.pack("!BBHI", 0x81, 201, 7, 99) + struct.pack("!IB", 0x1000, 5) + b"\0\0\1"
    rr += struct.pack("!IIII", 10, 20, 0, 0)
    for i, packet in enumerate([rtp, dtmf, ext, rr]):
        (directory / f"seed{i}").write_bytes(packet)
        # fuzz_forward frames datagrams with a flags byte and a 2-byte length
        framed = b"".join(bytes([f]) + len(packet).to_bytes(2, "big") + packet
                          for f in (0x40, 0x41, 0x80, 0xC1))
        (directory / f"framed{i}").write_bytes(framed)


@pytest.fixture(scope="module")
def fuzzers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fuzz")
    subprocess.run([str(ROOT / "csrc/fuzz/build.sh"), str(out)], check=True,
                   capture_output=True, timeout=180)
    return out


@pytest.mark.parametrize("target", ["fuzz_parsers", "fuzz_forward", "fuzz_srtp_cm"])
def test_fuzz_target_finds_nothing(fuzzers: Path, tmp_path: Path, target: str) -> None:
    if not (fuzzers / target).exists():
        pytest.skip(f"{target} was not built: OpenSSL's headers (libssl-dev) are missing")
    corpus = tmp_path / "corpus"
    _seed_corpus(corpus)
    result = subprocess.run(
        [str(fuzzers / target), "-max_total_time=8", "-seed=1", "-rss_limit_mb=1024",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = re.search(r"Done (\d+) runs", result.stderr)
    assert runs and int(runs.group(1)) > 10_000, result.stderr[-1000:]
    assert not list(tmp_path.glob("crash-*"))


def test_fuzzer_harness_catches_an_overread(fuzzers: Path, tmp_path: Path) -> None:
    """The sanitizer set-up can fail: a deliberately broken parser is caught."""
    broken = tmp_path / "broken.c"
    broken.write_text(
        "#include <stdint.h>\n#include <stddef.h>\n#include <stdlib.h>\n#include <string.h>\n"
        "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {\n"
        "  uint8_t *p = malloc(n ? n : 1); memcpy(p, d, n);\n"
        "  volatile uint8_t x = n >= 2 && p[0] == 0x80 ? p[12] : 0; (void)x;\n"
        "  free(p); return 0; }\n"
    )
    binary = tmp_path / "broken"
    subprocess.run(["clang", "-g", "-fsanitize=fuzzer,address", str(broken), "-o", str(binary)],
                   check=True, capture_output=True, timeout=120)
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "s").write_bytes(b"\x80\x00")
    result = subprocess.run([str(binary), "-max_total_time=20", f"-artifact_prefix={tmp_path}/",
                             str(corpus)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "heap-buffer-overflow" in result.stderr
