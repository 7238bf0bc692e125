"""The largest values the registry's columns hold, the same on every backend.

SQLAlchemy's `Integer` is a 32-bit `integer` on PostgreSQL (SQLite stores 64 bits, so a value that
works on the embedded default would fail on the cluster's registry), `BigInteger` is 64-bit on
both, and a `String(n)` holds n characters on PostgreSQL (SQLite does not check). Every number or
text a user gives that lands in a column is bounded below these at the door, with the bound in
the message, instead of failing in the database with a driver's traceback. No SQLAlchemy here:
the settings and the CLI import it.
"""

INTEGER_MAX = 2**31 - 1  # Integer
BIG_INTEGER_MAX = 2**63 - 1  # BigInteger
TENANT_NAME_CHARS = 200  # tenants.name
