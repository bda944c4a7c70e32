-- +goose up
-- +goose statementbegin
CREATE TABLE posts (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id),
    body TEXT NOT NULL
);
-- +goose statementend

-- +goose down
DROP TABLE posts;
