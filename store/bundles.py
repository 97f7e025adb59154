"""Bundle components: what each bundle (комплект) is made of, for the quantity a feed publishes.

A bundle has no stock of its own in any MoySklad report; a feed derives it from its components'
stock (see ``feeds.icml.bundle_quantity``). Rows are replaced per bundle by the sync.
"""

from __future__ import annotations

BUNDLES_SCHEMA = """
CREATE TABLE IF NOT EXISTS bundle_components (
    source TEXT NOT NULL, bundle_id TEXT NOT NULL, component_id TEXT NOT NULL, quantity REAL NOT NULL,
    PRIMARY KEY (source, bundle_id, component_id)) WITHOUT ROWID;
"""

# One bundle's components as JSON [[quantity in the bundle, kind, unavailable, stock counted], ...]:
# unavailable = the component is missing from the store, archived or removed (a variant: or its product);
# stock counted by the feed's quantity rule ({counted}) over its warehouses ({stock_filter}).
# Bound: :source; correlated: o.id (the bundle).
COMPONENTS = """(SELECT json_group_array(json_array(
        bc.quantity, c.kind,
        CASE WHEN c.id IS NULL OR c.archived OR c.removed OR coalesce(cp.archived OR cp.removed, 0) THEN 1 ELSE 0 END,
        (SELECT {counted} FROM stock WHERE source = :source AND offer_id = bc.component_id{stock_filter})))
    FROM bundle_components bc
    LEFT JOIN offers c ON c.source = :source AND c.id = bc.component_id
    LEFT JOIN products cp ON cp.source = :source AND cp.id = c.product_id AND c.kind = 'variant'
    WHERE bc.source = :source AND bc.bundle_id = o.id)"""
