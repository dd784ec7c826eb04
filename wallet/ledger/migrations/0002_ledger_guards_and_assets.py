"""PostgreSQL guards (append-only journal, non-negative balances) and the starting asset catalogue."""

from django.db import migrations

GUARDS_SQL = """
CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ledger rows are append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER ledger_journalentry_append_only BEFORE UPDATE OR DELETE ON ledger_journalentry
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_posting_append_only BEFORE UPDATE OR DELETE ON ledger_posting
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();

ALTER TABLE ledger_account ADD CONSTRAINT account_not_negative
    CHECK (allow_negative OR posted - held >= 0);
ALTER TABLE ledger_account ADD CONSTRAINT account_held_not_negative CHECK (held >= 0);
"""

REVERSE_SQL = """
ALTER TABLE ledger_account DROP CONSTRAINT IF EXISTS account_held_not_negative;
ALTER TABLE ledger_account DROP CONSTRAINT IF EXISTS account_not_negative;
DROP TRIGGER IF EXISTS ledger_posting_append_only ON ledger_posting;
DROP TRIGGER IF EXISTS ledger_journalentry_append_only ON ledger_journalentry;
DROP FUNCTION IF EXISTS ledger_refuse_change();
"""

def guards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(GUARDS_SQL, params=None)


def unguard(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(REVERSE_SQL, params=None)


def seed_assets(apps, schema_editor):
    from wallet.ledger.catalogue import CRYPTO, FIAT

    from wallet.core.ids import uuid7

    Asset = apps.get_model("ledger", "Asset")
    for code, name, symbol, decimals in FIAT:
        Asset.objects.get_or_create(code=code, defaults={
            "id": uuid7(), "kind": "fiat", "name": name, "symbol": symbol, "decimals": decimals,
            "currency_code": code})
    for code, name, symbol, decimals, chain_id, contract in CRYPTO:
        Asset.objects.get_or_create(code=code, defaults={
            "id": uuid7(), "kind": "crypto", "name": name, "symbol": symbol, "decimals": decimals,
            "chain_id": chain_id, "contract_address": contract})


class Migration(migrations.Migration):
    dependencies = [("ledger", "0001_initial")]

    operations = [
        migrations.RunPython(guards, unguard),
        migrations.RunPython(seed_assets, migrations.RunPython.noop),
    ]
