#!/bin/sh
# Creates Temporal's two databases on its PostgreSQL and brings their schemas to this server version.
# Runs in the temporalio/admin-tools image before the server starts; safe to run again, which is how an
# upgrade (a newer TEMPORAL_VERSION) gets its schema changes.
set -eu
SCHEMA=/etc/temporal/schema/postgresql/v12
sql() {
  temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$DB_PORT" -u "$POSTGRES_USER" "$@"
}
export SQL_PASSWORD="$POSTGRES_PWD"
for db in temporal temporal_visibility; do
  dir=temporal
  [ "$db" = temporal_visibility ] && dir=visibility
  # Both fail harmlessly when the database or its version table already exists.
  sql --db "$db" create || echo "database $db exists"
  sql --db "$db" setup-schema -v 0.0 || echo "schema versioning of $db is set up"
  # This one must succeed: it is what makes the schema match the server.
  sql --db "$db" update-schema -d "$SCHEMA/$dir/versioned"
done
echo "Temporal schema is up to date"
