"""Synthetic store generator with ground truth: the default data of the demo, the tests and the benchmarks.

A store has a catalogue (categories, nested brands, log-normal prices, stock-outs, consumables), shoppers
(segments, regions, latent tastes, heavy-tailed activity) and sessions of view → add_to_cart → purchase
events with a weekly rhythm and repeat purchases of consumables. :class:`GroundTruth` holds the exact
preferences that drove the purchases, so evaluation can compare models with the best possible ranking.

    store = generate_store(SynthConfig(users=50, items=40, days=14, seed=0))   # ~1.5k events, ~10 ms
    store.events, store.catalogue, store.users, store.truth.oracle_topk(["u00"], k=10)
    write_store(store, Path("data/synth")); read_store(Path("data/synth"))
    generate_store(SynthConfig.for_events(1_000_000))                          # ~1M events

What the defaults give (tested in tests/test_synth.py; at 1M events in brackets):
- funnel: add_to_cart/view 8–22 % (16 %), purchase/add_to_cart 30–60 % (51 %); every cart follows a
  view of the item in the same session, every purchase a cart;
- long tail: the top 10 % of items take > 35 % of events (59 %; top 1 %: 26 %);
- repeats: only consumables are bought again by the same shopper, days to weeks later (17 % of
  purchases are repeats); a durable is never bought twice by one shopper;
- stock-outs: 5 % of items go out of stock at a time in the history (``truth.out_of_stock_at``), are
  ``available = False`` in the catalogue and from then on get views but no carts or purchases;
- time: sessions follow a weekly rhythm (weekend busiest) and lunch/evening peaks; events of a session
  are seconds to minutes apart and stay on the session's day.

Everything is vectorised with numpy: no Python loop over events, sessions or shoppers (views are drawn
for a chunk of shoppers at a time). Category, segment and region profiles are in ``profiles.py``.
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
