-- no-transaction
vacuum;
