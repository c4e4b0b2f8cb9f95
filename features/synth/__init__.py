"""Synthetic store generator with ground truth: the default data of the demo, the tests and the benchmarks.

A store has a catalogue (categories, nested brands, log-normal prices, stock-outs, consumables), shoppers
(segments, regions, latent tastes, heavy-tailed activity) and sessions of view → add_to_cart → purchase
events with a weekly rhythm and repeat purchases of consumables. :class:`GroundTruth` holds the exact
preferences that drove the purchases, so evaluation can compare models with the best possible ranking.

    store = generate_store(SynthConfig(users=50, items=40, days=14, seed=0))
    store.events, store.catalogue, store.users, store.truth.oracle_topk(["u00"], k=10)
    write_store(store, Path("data/synth")); read_store(Path("data/synth"))
    SynthConfig.for_events(1_000_000)   # sizes for ~1M events

Everything is vectorised with numpy: no Python loop over events, sessions or shoppers (shoppers are
processed in chunks of a few thousand). Profiles of categories and segments are in ``profiles.py``.
"""

from features.synth.config import SynthConfig
from features.synth.store import SyntheticStore, generate_store, read_store, repeat_purchase_share, write_store
from features.synth.truth import GroundTruth

__all__ = [
    "GroundTruth",
    "SynthConfig",
    "SyntheticStore",
    "generate_store",
    "read_store",
    "repeat_purchase_share",
    "write_store",
]
