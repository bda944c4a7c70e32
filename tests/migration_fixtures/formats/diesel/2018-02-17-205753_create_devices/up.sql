CREATE TABLE devices (
  uuid TEXT NOT NULL PRIMARY KEY,
  user_uuid TEXT NOT NULL REFERENCES users (uuid),
  name TEXT NOT NULL
);
