DROP TABLE ciphers;
DROP TABLE users;
