"""Each closed-loop run claims a ROS domain no other run on this machine holds (ros/domain.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from internvla_ros.ros import domain as domains
from internvla_ros.ros.domain import claim_domain


@pytest.fixture(autouse=True)
def own_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(domains, "LOCK_DIR", tmp_path / "locks")
    monkeypatch.setattr(domains, "DOMAINS", range(1, 4))


def test_runs_get_distinct_domains_until_every_one_is_held_and_a_released_one_is_free_again() -> None:
    claims = [claim_domain() for _ in range(3)]
    assert sorted(c.domain for c in claims) == [1, 2, 3]
    with pytest.raises(RuntimeError, match="every ROS domain in 1-3 is in use by other runs"):
        claim_domain()
    claims[1].release()
    assert claim_domain().domain == claims[1].domain


def test_an_asked_domain_held_elsewhere_is_refused_with_the_fix(tmp_path: Path) -> None:
    """Held by another process: the kernel's lock, not this process's bookkeeping, decides."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from internvla_ros.ros import domain as d; "
        f"d.LOCK_DIR = Path({str(tmp_path / 'locks')!r}); c = d.claim_domain(2); print('held', flush=True); "
        "sys.stdin.read()")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match="ROS_DOMAIN_ID 2 is in use by another run on this machine"):
            claim_domain(2)
        assert claim_domain().domain in (1, 3)
    finally:
        holder.communicate("", timeout=30)
    assert claim_domain(2).domain == 2, "the holder's exit released it"


def test_apply_sets_this_process_and_its_children_on_the_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROS_DOMAIN_ID", raising=False)
    claim = claim_domain(3)
    env = claim.apply()
    assert env["ROS_DOMAIN_ID"] == "3" and env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert os.environ["ROS_DOMAIN_ID"] == "3"


def test_an_impossible_domain_is_refused() -> None:
    with pytest.raises(ValueError, match="ROS domain IDs are 0-232"):
        claim_domain(500)
