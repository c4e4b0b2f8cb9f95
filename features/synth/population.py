"""The catalogue and the shoppers of a synthetic store, as plain numpy arrays in id order.

Items: each belongs to a category (every category gets at least one) and to one of that category's
brands; its price is log-normal around the category median with a brand price level; its factor
vector is its category's unit vector plus brand and item noise, so tastes align with categories; its
popularity is a Zipf term over a random rank plus brand quality, which gives the long tail.

Shoppers: a segment and a region shift the taste vector (segments towards the categories they like)
and set price sensitivity and funnel biases; activity is log-normal, so a few shoppers are very active.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from features.synth.config import SynthConfig
from features.synth.profiles import (
    BRAND_PREFIXES,
    BRAND_SUFFIXES,
    CATEGORIES,
    REGION_SHARES,
    SEGMENTS,
    CategorySpec,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

NEVER: int = np.iinfo(np.int64).max  # out_of_stock_at_us of items that stay in stock

# Funnel logit intercepts, calibrated so the default store has view→cart ≈ 15 % and cart→buy ≈ 50 %.
CART_INTERCEPT = -3.6
BUY_INTERCEPT = -1.1
CART_SLOPE = 0.8
BUY_SLOPE = 0.5


@dataclass(frozen=True)
class Catalogue:
    """Item attributes (index = item number in id order) and the item side of the ground truth."""

    category: IntArray
    brand: IntArray  # global brand index; brand // brands_per_category == category
    noun: IntArray  # index into the category's nouns, for the item name
    price: FloatArray
    relative_price: FloatArray
    factors: FloatArray
    popularity: FloatArray
    consumable: npt.NDArray[np.bool_]
    cycle_days: FloatArray
    out_of_stock_at_us: IntArray  # µs since the epoch, NEVER if the item stays in stock
    category_vectors: FloatArray  # (categories, taste_dim) unit vectors
    specs: tuple[CategorySpec, ...]
    brand_names: npt.NDArray[np.str_]


@dataclass(frozen=True)
class Shoppers:
    """Shopper attributes (index = user number in id order) and the user side of the ground truth."""

    segment: IntArray
    region: IntArray
    taste: FloatArray
    price_sensitivity: FloatArray
    cart_bias: FloatArray
    buy_bias: FloatArray
    sessions_per_week: FloatArray


def build_catalogue(config: SynthConfig, rng: np.random.Generator, start_us: int, span_us: int) -> Catalogue:
    """Draw the catalogue: categories, brands, prices, factor vectors, popularity and stock-outs."""
    specs = CATEGORIES[: config.n_categories]
    category = _assign_categories(config, rng)
    brand = category * config.brands_per_category + _brand_within_category(config, rng)
    n_brands = config.n_categories * config.brands_per_category
    price, relative_price = _prices(specs, category, brand, n_brands, rng)
    category_vectors, factors = _factors(config, category, brand, n_brands, rng)
    popularity = _popularity(config, brand, n_brands, rng)
    consumable, cycle_days = _consumption(specs, category, rng)
    n_nouns = np.array([len(s.nouns) for s in specs])[category]
    noun = (rng.random(config.items) * n_nouns).astype(np.int64)
    return Catalogue(
        category=category,
        brand=brand,
        noun=noun,
        price=price,
        relative_price=relative_price,
        factors=factors,
        popularity=popularity,
        consumable=consumable,
        cycle_days=cycle_days,
        out_of_stock_at_us=_stock_outs(config, rng, start_us, span_us),
        category_vectors=category_vectors,
        specs=specs,
        brand_names=_brand_names(n_brands, rng),
    )


def _assign_categories(config: SynthConfig, rng: np.random.Generator) -> IntArray:
    # Unequal category sizes, but every category holds at least one item.
    n = config.n_categories
    sizes = rng.dirichlet(np.full(n, 4.0))
    rest = rng.choice(n, size=config.items - n, p=sizes)
    return rng.permutation(np.concatenate([np.arange(n), rest])).astype(np.int64)


def _brand_within_category(config: SynthConfig, rng: np.random.Generator) -> IntArray:
    # A few big brands and several small ones in every category.
    weights = (1.0 + np.arange(config.brands_per_category)) ** -0.8
    return rng.choice(config.brands_per_category, size=config.items, p=weights / weights.sum()).astype(np.int64)


def _prices(
    specs: tuple[CategorySpec, ...], category: IntArray, brand: IntArray, n_brands: int, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    log_median = np.log([s.median_price for s in specs])[category]
    sigma = np.array([s.price_sigma for s in specs])[category]
    brand_level = rng.normal(0.0, 0.3, n_brands)[brand]
    raw = np.exp(log_median + brand_level + sigma * rng.normal(size=len(category)))
    price = np.maximum(np.round(raw * 2.0) / 2.0 - 0.01, 0.49)  # shop prices: 4.49, 12.99, ...
    return price, np.log(price) - log_median


def _factors(
    config: SynthConfig, category: IntArray, brand: IntArray, n_brands: int, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    d = config.taste_dim
    category_vectors = rng.normal(size=(config.n_categories, d))
    category_vectors /= np.linalg.norm(category_vectors, axis=1, keepdims=True)
    brand_offset = 0.35 * rng.normal(size=(n_brands, d)) / np.sqrt(d)
    item_noise = 0.25 * rng.normal(size=(len(category), d)) / np.sqrt(d)
    return category_vectors, category_vectors[category] + brand_offset[brand] + item_noise


def _popularity(config: SynthConfig, brand: IntArray, n_brands: int, rng: np.random.Generator) -> FloatArray:
    rank = rng.permutation(config.items)
    quality = rng.normal(0.0, 0.3, n_brands)
    return np.asarray(-config.popularity_exponent * np.log1p(rank) + quality[brand], dtype=np.float64)


def _consumption(
    specs: tuple[CategorySpec, ...], category: IntArray, rng: np.random.Generator
) -> tuple[npt.NDArray[np.bool_], FloatArray]:
    consumable = np.array([s.consumable for s in specs])[category]
    cycle = np.array([s.cycle_days for s in specs])[category] * rng.lognormal(0.0, 0.2, len(category))
    return consumable, np.where(consumable, cycle, 0.0)


def _stock_outs(config: SynthConfig, rng: np.random.Generator, start_us: int, span_us: int) -> IntArray:
    # Stock-outs happen after the first fifth of the history, so these items first sell normally.
    out = np.full(config.items, NEVER, dtype=np.int64)
    n_out = round(config.out_of_stock_share * config.items)
    chosen = rng.choice(config.items, size=n_out, replace=False)
    out[chosen] = start_us + (rng.uniform(0.2, 0.95, n_out) * span_us).astype(np.int64)
    return out


def _brand_names(n_brands: int, rng: np.random.Generator) -> npt.NDArray[np.str_]:
    stems = np.array([p + s.lower() for p in BRAND_PREFIXES for s in BRAND_SUFFIXES])
    stems = stems[rng.permutation(len(stems))]
    j = np.arange(n_brands)
    names = stems[j % len(stems)].astype(object)
    repeat = j >= len(stems)  # more brands than stems: "Norix 2", "Norix 3", ...
    names[repeat] = names[repeat] + " " + (j[repeat] // len(stems) + 1).astype(str).astype(object)
    return names.astype(np.str_)


def build_shoppers(config: SynthConfig, rng: np.random.Generator, category_vectors: FloatArray) -> Shoppers:
    """Draw shoppers: segment, region, taste vector, price sensitivity, funnel biases and activity."""
    segments = SEGMENTS[: config.n_segments]
    seg_share = np.array([s.share for s in segments])
    segment = rng.choice(len(segments), size=config.users, p=seg_share / seg_share.sum()).astype(np.int64)
    reg_share = np.array(REGION_SHARES[: config.n_regions])
    region = rng.choice(config.n_regions, size=config.users, p=reg_share / reg_share.sum()).astype(np.int64)
    d = config.taste_dim
    region_shift = 0.3 * rng.normal(size=(config.n_regions, d))
    taste = _segment_shifts(config, category_vectors)[segment] + region_shift[region]
    taste += config.taste_strength * rng.normal(size=(config.users, d))
    price_sensitivity = np.array([s.price_sensitivity for s in segments])[segment] + rng.normal(0, 0.3, config.users)
    sigma = config.activity_sigma
    activity = rng.lognormal(-0.5 * sigma**2, sigma, config.users) * np.array([s.activity for s in segments])[segment]
    cart_bias = CART_INTERCEPT + config.cart_logit_offset + np.array([s.cart_bias for s in segments])[segment]
    buy_bias = BUY_INTERCEPT + config.purchase_logit_offset + np.array([s.buy_bias for s in segments])[segment]
    return Shoppers(
        segment=segment,
        region=region,
        taste=taste,
        price_sensitivity=price_sensitivity,
        cart_bias=cart_bias,
        buy_bias=buy_bias,
        sessions_per_week=config.sessions_per_user_week * activity,
    )


def _segment_shifts(config: SynthConfig, category_vectors: FloatArray) -> FloatArray:
    """Each segment's taste mean: 0.6 × the sum of the unit vectors of the categories it likes."""
    index = {spec.name: i for i, spec in enumerate(CATEGORIES[: config.n_categories])}
    shifts = np.zeros((config.n_segments, config.taste_dim))
    for s, segment in enumerate(SEGMENTS[: config.n_segments]):
        liked = [index[name] for name in segment.likes if name in index]
        if liked:
            shifts[s] = 0.6 * category_vectors[liked].sum(axis=0)
    return shifts
