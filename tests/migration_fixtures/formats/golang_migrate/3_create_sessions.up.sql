CREATE TABLE sessions (
    token TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id)
);
CREATE INDEX sessions_user ON sessions (user_id);
