"""The native kernels cross-compiled for aarch64 and checked under qemu-user (scripts/cross_check.py).
.ci/run installs Debian's g++-aarch64-linux-gnu and qemu-user; without them these tests skip."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from hymoe.quant.formats import NATIVE_FORMATS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import cross_check  # noqa: E402

CXX, EMULATOR, _ = cross_check.TARGETS["aarch64"]
pytestmark = pytest.mark.skipif(shutil.which(CXX) is None or shutil.which(EMULATOR) is None,
                                reason=f"needs {CXX} and {EMULATOR} (Debian: {cross_check.PACKAGES['aarch64']})")


def test_every_format_and_level_agrees_on_aarch64():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "cross_check.py"), "aarch64", "--json"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d = json.loads(r.stdout.splitlines()[-1])
    assert d["cases"] == len(NATIVE_FORMATS) * len(cross_check.SHAPES)
    assert d["levels"] == ["generic", "neon-dotprod"]
    assert d["checks"] == d["cases"] * len(d["levels"]) and d["failed"] == []


def test_the_self_test_fails_on_a_wrong_reference(tmp_path):
    exe = cross_check.build("aarch64", tmp_path)
    cases = tmp_path / "cases.bin"
    cross_check.write_cases(cases)
    data = bytearray(cases.read_bytes())
    # the first case (F32, 16 rows of 512, 1 token): its header, weights and activations, then its
    # dequantized values, of which the first is made 1.5 times larger
    at = 8 + 16 + struct.calcsize("<4iq") + 16 * 512 * 4 + 512 * 4
    value = struct.unpack_from("<f", data, at)[0]
    struct.pack_into("<f", data, at, value * 1.5 + 1.0)
    cases.write_bytes(bytes(data))
    r = subprocess.run([EMULATOR, str(exe), str(cases)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    assert [ln.split()[0] for ln in r.stdout.splitlines() if ln.endswith("FAILED")][:1] == ["F32"]
