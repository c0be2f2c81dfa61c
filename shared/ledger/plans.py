"""Query shapes that keep their plan whatever the database's statistics say.

Without statistics (a young database, PostgreSQL before its first ANALYZE, SQLite that is
never analysed) both planners guess: every equality keeps about 0.5% of the rows, and
PostgreSQL sizes a never-vacuumed table from its declared column widths (10,000 items
looked like 700). Guesses that hurt the hot path, and the shapes that avoid them:

- an index on `state` alone looked as good as the primary key, the lease or the
  (job_id, state) index, so a claim of ten items read every pending item through it, and
  once more every dead row version that claims leave behind: `row_check`;
- an EXISTS became a hash or nested-loop join over every matching row of the inner
  table (the reconciler's search for unsettled jobs compared every open job with every
  pending item: seconds at 10,000 queued jobs): `found`, `not_found`;
- `state IN (...)` on an index's third column became a filter over every row of the
  first two (a claim read all of a tenant's history): the claim-order index now holds
  only the jobs with a pending item, and the state is a `row_check` on them, see
  `turns.claimable`.
"""
from __future__ import annotations

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class row_check(FunctionElement):  # noqa: N801  (used like a SQL function)
    """`column` as a condition each row is checked against, never as the index a
    statement reads by: for re-checks next to a primary key or a lease (`+column` on
    SQLite, `(column || '')` on PostgreSQL; the values compare exactly as the column's)."""

    inherit_cache = True
    name = "row_check"

    def __init__(self, column):
        super().__init__(column)
        self.type = column.type


@compiles(row_check)
def _row_check(element, compiler, **kw) -> str:
    return f"({compiler.process(element.clauses, **kw)} || '')"


@compiles(row_check, "sqlite")
def _row_check_sqlite(element, compiler, **kw) -> str:
    return f"+{compiler.process(element.clauses, **kw)}"


def found(query):
    """Whether `query` (a SELECT of one NOT NULL column, correlated to the outer row) has
    a row: a scalar subquery that stops at the first. Neither planner turns it into a
    join, so it runs once per outer row through the index its equalities name."""
    return query.limit(1).scalar_subquery().is_not(None)


def not_found(query):
    """The negation of `found`."""
    return query.limit(1).scalar_subquery().is_(None)
