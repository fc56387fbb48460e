"""The oldest supported Ultralytics release passes the parser tests (the newest runs the whole suite)."""

from __future__ import annotations

import os
import re
import shutil
import sys
import uuid

import pytest
from conftest import ROOT, run

OLDEST = "8.3.0"  # lower bound of ultralytics_ema.plugin.patches.SUPPORTED_ULTRALYTICS
CACHE = ROOT / ".cache" / f"ultralytics-{OLDEST}"


@pytest.fixture(scope="module")
def oldest_ultralytics() -> str:
    """Ultralytics OLDEST installed (pure Python, no dependencies) into a cache folder, for PYTHONPATH."""
    if not (CACHE / "ultralytics" / "__init__.py").is_file():
        tmp = CACHE.with_name(f"{CACHE.name}.tmp-{uuid.uuid4().hex[:8]}")
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp)]
        done = run([*pip, f"ultralytics=={OLDEST}", "tqdm"])
        if done.returncode:
            shutil.rmtree(tmp, ignore_errors=True)
            message = f"cannot install ultralytics=={OLDEST} from the package registry: {done.stderr[-500:]}"
            pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
        shutil.rmtree(CACHE, ignore_errors=True)
        os.replace(tmp, CACHE)
    return str(CACHE)


def test_parser_tests_pass_on_oldest_supported_ultralytics(oldest_ultralytics: str):
    env = {"PYTHONPATH": oldest_ultralytics, "ULTRALYTICS_EMA_EXPECT_VERSION": OLDEST}
    done = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_parser.py"], cwd=ROOT, env=env
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.fullmatch(r"\d+ passed(, \d+ warnings?)? in [\d.]+s( \(.*\))?", summary), summary
