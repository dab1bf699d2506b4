#!/usr/bin/env python3
"""Generate the demo dataset examples/data/sales.csv (200 rows, deterministic).

Run from anywhere: python3 runner/examples/data/generate_sales.py
The same seed always produces the same file, so the committed CSV can be regenerated and diffed.
"""
import datetime
import os
import random

SEED = 20240101
ROWS = 200
START = datetime.date(2024, 1, 1)

# Product, list price, typical units per order.
PRODUCTS = [
    ("Wireless Mouse", 24.99, 6),
    ("Mechanical Keyboard", 89.00, 3),
    ("USB-C Hub", 39.50, 5),
    ("27in Monitor", 249.00, 2),
    ("Laptop Stand", 34.90, 4),
    ("Noise-Cancelling Headset", 129.00, 2),
]
REGIONS = ["North", "South", "East", "West"]
CHANNELS = ["online", "retail", "partner"]


def main() -> None:
    rng = random.Random(SEED)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sales.csv")
    day = START
    lines = ["date,region,product,channel,units,unit_price,revenue"]
    for _ in range(ROWS):
        name, price, typical = PRODUCTS[int(rng.random() * len(PRODUCTS))]
        region = REGIONS[int(rng.random() * len(REGIONS))]
        channel = CHANNELS[int(rng.random() * len(CHANNELS))]
        units = max(1, int(round(typical * (0.4 + rng.random() * 1.4))))
        # Occasional discounts; partners get 10 % off.
        discount = 0.15 if rng.random() < 0.12 else 0.0
        if channel == "partner":
            discount += 0.10
        unit_price = round(price * (1 - discount), 2)
        revenue = round(units * unit_price, 2)
        lines.append(
            f"{day.isoformat()},{region},{name},{channel},{units},{unit_price:.2f},{revenue:.2f}"
        )
        # About two orders a day: move to the next day a little over half the time.
        if rng.random() < 0.55:
            day += datetime.timedelta(days=1)
    with open(out, "w", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {ROWS} rows to {out}")


if __name__ == "__main__":
    main()
