"""A ROS_DOMAIN_ID of its own for each closed-loop run on this machine (`demo`, `record`, `eval`).

Each run starts a simulated cell and a policy or expert node that must hear only each other. A random
domain collided when two runs overlapped (a recording once started an evaluation's episode), so a run
now claims its domain with an exclusive ``flock`` on a file per domain: other runs skip a claimed domain,
and the kernel releases the claim when the run ends, however it ends.
"""

from __future__ import annotations

import fcntl
import os
import random
import tempfile
from pathlib import Path
from typing import IO

DOMAINS = range(1, 101)  # inside the range every RMW accepts; 0, the default, is left to the lab's own graph
LOCK_DIR = Path(tempfile.gettempdir()) / "internvla_ros_domains"


class DomainClaim:
    """A claimed domain; :meth:`apply` makes it this process's and returns the environment for its children."""

    def __init__(self, domain: int, lock: IO[str]) -> None:
        self.domain = domain
        self._lock: IO[str] | None = lock

    def apply(self) -> dict[str, str]:
        values = {"ROS_DOMAIN_ID": str(self.domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
        os.environ.update(values)  # this process's own rclpy joins the same domain
        return dict(os.environ)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _try_lock(domain: int) -> IO[str] | None:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    handle = open(LOCK_DIR / f"{domain}.lock", "a")  # noqa: SIM115 (held for the claim's lifetime)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def claim_domain(domain_id: int | None = None) -> DomainClaim:
    """Claims ``domain_id``, or a free domain in 1-100 chosen at random; raises RuntimeError naming the fix
    when the asked one (or every one) is held by another run."""
    if domain_id is not None:
        if not 0 <= domain_id <= 232:
            raise ValueError(f"--domain-id {domain_id}: ROS domain IDs are 0-232")
        lock = _try_lock(domain_id)
        if lock is None:
            raise RuntimeError(f"ROS_DOMAIN_ID {domain_id} is in use by another run on this machine "
                               f"(lock {LOCK_DIR / f'{domain_id}.lock'}); pick another --domain-id or omit it")
        return DomainClaim(domain_id, lock)
    candidates = list(DOMAINS)
    random.SystemRandom().shuffle(candidates)
    for domain in candidates:
        lock = _try_lock(domain)
        if lock is not None:
            return DomainClaim(domain, lock)
    raise RuntimeError(f"every ROS domain in {DOMAINS.start}-{DOMAINS.stop - 1} is in use by other runs on this "
                       f"machine (locks in {LOCK_DIR}); wait for one to end")
