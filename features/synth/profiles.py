"""The fixed vocabulary of the synthetic store: categories, segments, regions and the weekly rhythm.

These tables are constants, not random draws, so a store's category names, price levels and segment
behaviour read the same for every seed; the seed only decides which items, shoppers and events exist.
:class:`~features.synth.config.SynthConfig` picks the first ``n_categories`` / ``n_segments`` /
``n_regions`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class CategorySpec:
    """One product category.

    ``median_price``/``price_sigma`` parametrise the log-normal price of its items. Consumable
    categories are bought again: ``cycle_days`` is the typical time between two purchases of the same
    item by the same shopper (0 for durable goods, which a shopper never buys twice).
    """

    name: str
    median_price: float
    price_sigma: float
    consumable: bool
    cycle_days: float
    nouns: tuple[str, ...]


# Ordered so that any prefix mixes durable and consumable categories (the default 12 hold 4 consumables).
CATEGORIES: Final[tuple[CategorySpec, ...]] = (
    CategorySpec("kitchen", 25.0, 0.6, False, 0.0, ("knife", "pan", "kettle", "grater", "mug", "bowl")),
    CategorySpec("garden", 40.0, 0.7, False, 0.0, ("hose", "rake", "planter", "shears", "lamp", "bench")),
    CategorySpec("electronics", 120.0, 0.9, False, 0.0, ("headphones", "charger", "speaker", "tablet", "camera")),
    CategorySpec("coffee", 12.0, 0.4, True, 14.0, ("beans", "ground coffee", "espresso pods", "decaf", "cold brew")),
    CategorySpec("fashion", 35.0, 0.6, False, 0.0, ("t-shirt", "jacket", "scarf", "dress", "jeans", "cap")),
    CategorySpec("pet_food", 30.0, 0.5, True, 21.0, ("dry dog food", "cat food", "treats", "kibble", "bird seed")),
    CategorySpec("books", 15.0, 0.4, False, 0.0, ("novel", "cookbook", "atlas", "biography", "comic")),
    CategorySpec("beauty", 18.0, 0.6, True, 30.0, ("shampoo", "lotion", "lipstick", "soap", "serum")),
    CategorySpec("toys", 20.0, 0.7, False, 0.0, ("puzzle", "doll", "blocks", "kite", "board game")),
    CategorySpec("home", 45.0, 0.7, False, 0.0, ("cushion", "rug", "vase", "clock", "curtain", "frame")),
    CategorySpec("grocery", 5.0, 0.5, True, 7.0, ("pasta", "olive oil", "rice", "tea", "cereal", "honey")),
    CategorySpec("sports", 50.0, 0.8, False, 0.0, ("yoga mat", "ball", "racket", "dumbbell", "bottle")),
    CategorySpec("shoes", 60.0, 0.5, False, 0.0, ("sneakers", "boots", "sandals", "loafers", "slippers")),
    CategorySpec("baby", 25.0, 0.5, True, 10.0, ("diapers", "wipes", "baby food", "formula", "bibs")),
    CategorySpec("office", 12.0, 0.6, False, 0.0, ("notebook", "pen set", "stapler", "desk lamp", "folder")),
    CategorySpec("tools", 55.0, 0.8, False, 0.0, ("drill", "hammer", "wrench set", "saw", "level")),
    CategorySpec("health", 15.0, 0.5, True, 30.0, ("vitamins", "plasters", "protein", "thermometer strips")),
    CategorySpec("furniture", 200.0, 0.8, False, 0.0, ("chair", "table", "shelf", "sofa", "desk")),
    CategorySpec("cleaning", 8.0, 0.4, True, 21.0, ("detergent", "sponges", "spray", "bin bags", "dish tabs")),
    CategorySpec("music", 30.0, 0.7, False, 0.0, ("vinyl", "ukulele", "strings", "drumsticks", "tuner")),
)


@dataclass(frozen=True)
class SegmentSpec:
    """A shopper segment: how it shifts activity, price sensitivity, funnel and category tastes.

    ``price_sensitivity`` multiplies the log price of an item relative to its category median (negative
    = drawn to expensive items). ``cart_bias``/``buy_bias`` are added to the funnel logits.
    ``likes`` names categories whose factor vectors are added to the segment's taste.
    """

    name: str
    share: float
    activity: float
    price_sensitivity: float
    cart_bias: float
    buy_bias: float
    likes: tuple[str, ...]


SEGMENTS: Final[tuple[SegmentSpec, ...]] = (
    SegmentSpec("bargain", 0.30, 1.2, 1.6, 0.15, -0.35, ("grocery", "cleaning", "home", "toys")),
    SegmentSpec("family", 0.30, 1.1, 0.8, 0.0, 0.1, ("toys", "baby", "grocery", "pet_food", "garden")),
    SegmentSpec("casual", 0.25, 0.6, 0.5, -0.2, -0.1, ("books", "music", "sports", "coffee")),
    SegmentSpec("premium", 0.15, 1.0, -0.4, 0.1, 0.45, ("electronics", "fashion", "beauty", "furniture")),
)

REGIONS: Final[tuple[str, ...]] = ("north", "south", "east", "west", "central")
REGION_SHARES: Final[tuple[float, ...]] = (0.24, 0.22, 0.2, 0.19, 0.15)

# Relative session volume per weekday, Monday first: quiet mid-week, busy weekend.
WEEKDAY_WEIGHTS: Final[tuple[float, ...]] = (1.0, 0.85, 0.85, 0.9, 0.95, 1.25, 1.4)

# Time of day of a session start: (share, mean hour, sd hours) of a lunch and an evening peak; the
# rest is spread evenly over 07:00–23:00.
LUNCH_PEAK: Final = (0.25, 12.5, 1.5)
EVENING_PEAK: Final = (0.55, 20.0, 2.0)
DAYTIME_HOURS: Final = (7.0, 23.0)

# Syllables for brand names ("Norix", "Velara", ...): 16 × 15 = 240 distinct names before numbering.
BRAND_PREFIXES: Final = (
    "Nor",
    "Vel",
    "Ark",
    "Zen",
    "Lum",
    "Ora",
    "Tek",
    "Bri",
    "Cal",
    "Dur",
    "Fen",
    "Gal",
    "Kor",
    "Pax",
    "Sol",
    "Vin",
)
BRAND_SUFFIXES: Final = ("a", "ix", "on", "ero", "ia", "ly", "co", "us", "ent", "ara", "o", "um", "is", "ora", "ex")
