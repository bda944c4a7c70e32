ALTER TABLE ciphers DROP COLUMN favorite;
