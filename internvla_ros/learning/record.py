"""Which episodes `internvla record` and `internvla eval` run: seeds, rule variants, held-out ranges.

Episode i of a run started at seed S uses seed S + i and rule variant (S + i) % 2, so any run covers
both instructions equally. With ``both_rules`` each seed is recorded under both rules (episodes 2k and
2k + 1 use seed S + k): the same parcels, sorted into opposite bins, so that only the instruction
separates the two, and a policy cannot learn the bins from a layout it remembers. Seeds below
EVAL_SEED_START are for training recordings; from EVAL_SEED_START on they are held out for evaluation
(`internvla record` refuses them, `internvla eval` starts there by default), so an evaluated episode
never has the parcel layout of a training one.

With both rules and the colours equally likely, neither the word that names the rule nor a parcel's
colour says on its own which bin the parcel goes to: the bin is their combination (an exclusive or). A
model that starts without language knowledge then gets no first-order gradient towards either input, and
a small one was measured to stay at that symmetric point (it does not learn the rule). ``red_share``
records the same layouts with more parcels of one colour (each red with that probability): the word alone
then predicts most bins, the model learns to read it, and the colour follows. Evaluation keeps the
colours equally likely. ``lanes_m`` records the same layouts with the parcels moved across the belt into
a band (e.g. the side nearest the arm, where a policy fails most): more demonstrations where they are
needed, on seeds whose other draws stay as they were.
"""

from __future__ import annotations

from internvla_ros.sim.task import RULES, EpisodeSpec, lanes_problem

EVAL_SEED_START = 1_000_000
SEED_MAX = 2**31 - 1


def episode_specs(seed: int, episodes: int, parcels: int, both_rules: bool = False,
                  red_share: float | None = None, lanes_m: tuple[float, float] | None = None) -> list[EpisodeSpec]:
    """The run's episodes; a bad count, seed or share is refused with the allowed range."""
    if episodes < 1:
        raise ValueError(f"--episodes must be 1 or more, got {episodes}")
    if both_rules and episodes % 2:
        raise ValueError(f"--both-rules records each seed twice: give an even --episodes, got {episodes}")
    if parcels < 1:
        raise ValueError(f"--parcels must be 1 or more, got {parcels}")
    if red_share is not None and not 0.0 <= red_share <= 1.0:
        raise ValueError(f"--red-share is the probability that a parcel is red: give one in [0, 1], got {red_share}")
    if lanes_m is not None and (problem := lanes_problem(lanes_m)):
        raise ValueError(f"--lanes-mm {lanes_m[0] * 1000:g} {lanes_m[1] * 1000:g}: {problem}")
    per_seed = 2 if both_rules else 1
    seeds = episodes // per_seed
    if seed < 0 or seed + seeds - 1 > SEED_MAX:
        raise ValueError(f"--seed must be in 0..{SEED_MAX - seeds + 1} for {episodes} episodes, got {seed}")
    return [EpisodeSpec(seed + i // per_seed, (seed + i // per_seed + i % per_seed) % len(RULES), parcels, episode=i,
                        red_share=red_share, lanes_m=lanes_m) for i in range(episodes)]


def check_training_seeds(first: int, last: int) -> None:
    """Training recordings (seeds ``first``..``last``) stay below the held-out evaluation seeds."""
    if last >= EVAL_SEED_START:
        raise ValueError(f"seeds {first}..{last} reach the held-out evaluation range "
                         f"(>= {EVAL_SEED_START}): record training episodes with seeds below it")


def bag_name(index: int) -> str:
    return f"episode_{index:04d}"
